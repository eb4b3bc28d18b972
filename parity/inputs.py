"""Inputs for a parity run: image batches (random or decoded from a folder) and loss targets.

Both frameworks receive the very same normalised float32 NHWC array (the twin
gets it transposed to NCHW), so any difference in the report comes from the
models, never from the input pipeline.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_jax.config import ViTConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class InputError(ValueError):
    """An unusable --images folder or image file."""


def normalise(pixels: np.ndarray, config: ViTConfig) -> np.ndarray:
    """[0, 1] NHWC pixels -> model input, `(x - pixel_mean) / pixel_std` per channel, float32."""
    mean = np.asarray(config.pixel_mean, np.float64)
    std = np.asarray(config.pixel_std, np.float64)
    return ((pixels.astype(np.float64) - mean) / std).astype(np.float32)


def random_images(config: ViTConfig, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform [0, 1] pixels through the same normalisation real images get."""
    h, w = config.image_hw
    return normalise(rng.uniform(0.0, 1.0, (batch, h, w, config.num_channels)), config)


def list_images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise InputError(f"--images {folder!r} is not a directory")
    paths = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )
    if not paths:
        raise InputError(f"--images {folder!r} holds no image files (expected one of {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def load_images(paths: list[str], config: ViTConfig) -> np.ndarray:
    """Decode, convert to the config's channel count, resize (bicubic) to its image size, normalise."""
    if config.num_channels not in (1, 3):
        raise InputError(f"--images needs a 1- or 3-channel config, this one has {config.num_channels} channels")
    mode = "RGB" if config.num_channels == 3 else "L"
    h, w = config.image_hw
    pixels = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert(mode).resize((w, h), Image.Resampling.BICUBIC)
                array = np.asarray(image, np.float64) / 255.0
        except (UnidentifiedImageError, OSError) as error:
            raise InputError(f"cannot decode image {path!r}: {error}") from None
        pixels.append(array.reshape(h, w, config.num_channels))
    return normalise(np.stack(pixels), config)


def output_shape(config: ViTConfig, batch: int) -> tuple[int, ...]:
    """Shape of the model output: pooled (B, K) or per token (B, seq, K)."""
    width = config.num_classes or config.features_dim
    if config.classifier in ("token", "gap", "token_gap", "map"):
        return (batch, width)
    return (batch, config.seq_len, width)


def make_targets(config: ViTConfig, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Fixed targets for the loss: class labels per output row, or regression targets without a head."""
    shape = output_shape(config, batch)
    if config.num_classes:
        return rng.integers(0, config.num_classes, shape[:-1]).astype(np.int32)
    return rng.standard_normal(shape).astype(np.float32)
