"""Per-image transforms: crop box choice, resampling, flip, normalisation.

Both the training and the evaluation transform pick a box in source pixel
coordinates and resample that box straight to the output size (one PIL resize
with `box=`), so eval's resize-then-center-crop is a single interpolation and
random-resized crops work at sub-pixel precision on tiny images such as 8x8
digits.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from vit_jax.data.decode import check_channels
from vit_jax.data.errors import DataError

RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}

Box = tuple[float, float, float, float]  # left, top, right, bottom


def center_crop_box(height: int, width: int, out_hw: tuple[int, int], crop_fraction: float) -> Box:
    """The source region that `resize so the output is crop_fraction of it, then center crop` keeps."""
    out_h, out_w = out_hw
    scale = max(out_h / height, out_w / width) / crop_fraction  # output pixels per source pixel
    crop_h, crop_w = min(out_h / scale, height), min(out_w / scale, width)
    top, left = (height - crop_h) / 2, (width - crop_w) / 2
    return left, top, left + crop_w, top + crop_h


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> Box:
    """Inception-style crop: area fraction uniform in `scale`, aspect log-uniform in `ratio`.

    Ten tries at a crop that fits, then the whole image clamped to `ratio`
    (the convention torchvision and timm follow).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = math.sqrt(target_area * aspect)
        crop_h = math.sqrt(target_area / aspect)
        if crop_w <= width and crop_h <= height:
            top = rng.uniform(0, height - crop_h)
            left = rng.uniform(0, width - crop_w)
            return left, top, left + crop_w, top + crop_h
    aspect = width / height
    crop_w, crop_h = float(width), float(height)
    if aspect < ratio[0]:
        crop_h = width / ratio[0]
    elif aspect > ratio[1]:
        crop_w = height * ratio[1]
    top, left = (height - crop_h) / 2, (width - crop_w) / 2
    return left, top, left + crop_w, top + crop_h


def resample_box(pixels: np.ndarray, box: Box, out_hw: tuple[int, int], resample: str) -> np.ndarray:
    """Resample `box` of an (H, W, C) uint8 or float32 image to (out_h, out_w, C), same dtype."""
    height, width = pixels.shape[:2]
    if out_hw == (height, width) and box == (0.0, 0.0, float(width), float(height)):
        return pixels
    size = (out_hw[1], out_hw[0])
    method = RESAMPLE_FILTERS[resample]
    if pixels.dtype == np.uint8 and pixels.shape[-1] in (1, 3):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        out = np.asarray(image.resize(size, method, box=box))
        return out[..., None] if out.ndim == 2 else out
    # Float images: PIL's 32-bit float mode is single-channel, so one plane at a time.
    planes = [
        np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32)).resize(size, method, box=box))
        for c in range(pixels.shape[-1])
    ]
    return np.stack(planes, axis=-1)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """(H, W, C) pixels -> normalised float32 (h, w, channels).

    train and augment: random-resized crop, then a horizontal flip with
    probability 1/2 if `flip`. Otherwise (eval, or augment=False): resize so the
    shorter side fits image_size / crop_fraction, then center crop.
    Normalisation: (x - mean) / std on x in [0, 1].
    """

    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    train: bool
    augment: bool = True
    flip: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_fraction: float = 0.875
    resample: str = "bilinear"

    def __post_init__(self):
        check_channels(self.channels)
        size = tuple(int(s) for s in self.image_size)
        if len(size) != 2 or min(size) <= 0:
            raise DataError(f"image_size must be a positive (height, width), got {self.image_size!r}")
        object.__setattr__(self, "image_size", size)
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != self.channels:
                raise DataError(f"{name} has {len(values)} values, expected one per channel ({self.channels})")
            object.__setattr__(self, name, values)
        if any(s <= 0 for s in self.std):
            raise DataError(f"std must be > 0, got {self.std!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise DataError(f"crop_fraction must be in (0, 1], got {self.crop_fraction!r}")
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise DataError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale!r}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise DataError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise DataError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}")

    @property
    def random(self) -> bool:
        return self.train and self.augment

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        height, width = pixels.shape[:2]
        flip = False
        if self.random:
            box = random_resized_crop_box(height, width, rng, self.crop_scale, self.crop_ratio)
            flip = self.flip and rng.random() < 0.5
        else:
            box = center_crop_box(height, width, self.image_size, self.crop_fraction)
        out = resample_box(pixels, box, self.image_size, self.resample)
        if flip:
            out = out[:, ::-1]
        out = out.astype(np.float32) / 255.0 if out.dtype == np.uint8 else out.astype(np.float32)
        if out.shape[-1] != self.channels:
            out = np.repeat(out, self.channels, axis=-1)  # grey source, RGB model
        return (out - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
