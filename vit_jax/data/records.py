"""Random-access record sources: what `Dataset.train` and `Dataset.eval` hold.

A source returns `(pixels, label)` for an index, where pixels are (H, W, C)
uint8 or float32 in [0, 1] and C is 1 or the source's `channels`. It also
carries the augmentation defaults that suit its data (no flips for digits,
gentler crops for tiny images), which `make_loader` uses unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vit_jax.data.decode import array_to_channels, check_channels, decode_image
from vit_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class AugmentDefaults:
    """Per-dataset defaults for the transforms (see transforms.ImageTransform)."""

    flip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)  # Inception-style random-resized crop
    crop_fraction: float = 0.875  # eval center crop: the ImageNet convention


# Arrays of small, already framed images: evaluate on the whole image.
ARRAY_DEFAULTS = AugmentDefaults(crop_fraction=1.0)


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"{what}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise DataError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{what}: labels must be in [0, {num_classes}), found range [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int32)


def to_image_array(images: np.ndarray, what: str) -> np.ndarray:
    """uint8 stays uint8; integers in [0, 255] become uint8; floats must be in [0, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if images.size == 0:
        raise DataError(f"{what}: no images")
    if np.issubdtype(images.dtype, np.integer) or images.dtype == np.bool_:
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise DataError(f"{what}: integer images must be in [0, 255], found [{low}, {high}]")
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        low, high = float(np.min(images)), float(np.max(images))
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            raise DataError(f"{what}: float images must be in [0, 1], found [{low}, {high}]")
        return images.astype(np.float32)
    raise DataError(f"{what}: images must be uint8, integer or float, got dtype {images.dtype}")


class ArrayRecords:
    """Images held in memory as one (N, H, W, C) array."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        num_classes: int,
        channels: int,
        what: str,
        defaults: AugmentDefaults = ARRAY_DEFAULTS,
    ):
        self.channels = check_channels(channels)
        images = to_image_array(images, what)
        self.images = array_to_channels(images, channels, what)
        self.labels = check_labels(labels, num_classes, what)
        if len(self.images) != len(self.labels):
            raise DataError(f"{what}: {len(self.images)} images but {len(self.labels)} labels; expected one label per "
                            "image")
        if len(self.images) == 0:
            raise DataError(f"{what}: no images")
        self.num_classes = num_classes
        self.defaults = defaults
        self.what = what

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: np.ndarray) -> ArrayRecords:
        return ArrayRecords(
            self.images[indices],
            self.labels[indices],
            num_classes=self.num_classes,
            channels=self.channels,
            what=self.what,
            defaults=self.defaults,
        )

    def __repr__(self) -> str:
        return f"ArrayRecords({self.what}: {len(self)} images {self.images.shape[1:]} {self.images.dtype})"


class FileRecords:
    """Image files decoded on access; a corrupt file raises CorruptImageError."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray,
        *,
        num_classes: int,
        channels: int,
        what: str,
        defaults: AugmentDefaults = AugmentDefaults(),
    ):
        self.channels = check_channels(channels)
        self.paths = list(paths)
        self.labels = check_labels(labels, num_classes, what)
        if len(self.paths) != len(self.labels):
            raise DataError(f"{what}: {len(self.paths)} files but {len(self.labels)} labels")
        if not self.paths:
            raise DataError(f"{what}: no image files")
        self.num_classes = num_classes
        self.defaults = defaults
        self.what = what

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return decode_image(self.paths[index], self.channels), int(self.labels[index])

    def subset(self, indices: np.ndarray) -> FileRecords:
        return FileRecords(
            [self.paths[i] for i in indices],
            self.labels[indices],
            num_classes=self.num_classes,
            channels=self.channels,
            what=self.what,
            defaults=self.defaults,
        )

    def __repr__(self) -> str:
        return f"FileRecords({self.what}: {len(self)} files)"


RecordSource = ArrayRecords | FileRecords
