"""The evaluation transform applied to one image file (prediction, parity reports)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vit_jax.data.decode import decode_image
from vit_jax.data.transforms import ImageTransform


def decode_image_file(
    path: str,
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
    crop_fraction: float = 0.875,
    resample: str = "bilinear",
) -> np.ndarray:
    """float32 (h, w, channels): decode, resize + center crop, normalise, as `make_loader(train=False)`.

    Raises DataError (CorruptImageError for undecodable files) naming the path.
    """
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    transform = ImageTransform(
        image_size=tuple(image_size),
        mean=tuple(mean),
        std=tuple(std),
        channels=channels,
        train=False,
        crop_fraction=crop_fraction,
        resample=resample,
    )
    return transform([decode_image(path, channels)])[0]
