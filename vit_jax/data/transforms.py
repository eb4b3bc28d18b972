"""Image transforms: crop boxes, resampling, flip and normalisation, batch at a time.

Training and evaluation both pick a box in source pixel coordinates and
resample that box straight to the output size, so eval's resize + center crop
is one interpolation, and random-resized crops keep sub-pixel precision on tiny
images such as the 8x8 digits. uint8 images are resampled by PIL one at a time
(its C code is fastest there). Small float images (the digits), which PIL
can only do one plane at a time, go through the same filter written as two
batched matrix products; larger float images through PIL plane by plane.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vit_jax.data.decode import check_channels
from vit_jax.data.errors import DataError
from vit_jax.data.rand_augment import RandAugment
from vit_jax.data.random_erasing import RandomErasing

RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
CROP_TRIES = 10
UNIFORMS_PER_EXAMPLE = 4 * CROP_TRIES + 1  # four per crop try, one for the flip


def center_crop_boxes(heights, widths, out_hw: tuple[int, int], crop_fraction: float) -> np.ndarray:
    """(B, 4) left, top, right, bottom: what `resize so the output is crop_fraction of the
    image, then center crop` keeps of each source image."""
    heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    out_h, out_w = out_hw
    scale = np.maximum(out_h / heights, out_w / widths) / crop_fraction  # output px per source px
    crop_h, crop_w = np.minimum(out_h / scale, heights), np.minimum(out_w / scale, widths)
    top, left = (heights - crop_h) / 2, (widths - crop_w) / 2
    return np.stack([left, top, left + crop_w, top + crop_h], axis=-1)


def random_resized_crop_boxes(heights, widths, u: np.ndarray, scale, ratio) -> np.ndarray:
    """(B, 4) Inception-style crops from uniforms u (B, >= 4 * CROP_TRIES).

    Area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`; the
    first of ten tries that fits, else the whole image clamped to `ratio`
    (the convention torchvision and timm follow).
    """
    heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    tries = u[:, : 4 * CROP_TRIES].reshape(len(u), CROP_TRIES, 4)
    area = (heights * widths)[:, None] * (scale[0] + (scale[1] - scale[0]) * tries[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(log_lo + (log_hi - log_lo) * tries[..., 1])
    crop_w, crop_h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (crop_w <= widths[:, None]) & (crop_h <= heights[:, None])
    first = np.argmax(fits, axis=1)
    rows = np.arange(len(u))
    crop_w, crop_h = crop_w[rows, first], crop_h[rows, first]
    top = tries[rows, first, 2] * (heights - crop_h)
    left = tries[rows, first, 3] * (widths - crop_w)
    # No try fitted: the whole image, narrowed to the allowed aspect ratios.
    missed = ~fits.any(axis=1)
    image_aspect = widths / heights
    fallback_w = np.where(image_aspect > ratio[1], heights * ratio[1], widths)
    fallback_h = np.where(image_aspect < ratio[0], widths / ratio[0], heights)
    crop_w = np.where(missed, fallback_w, crop_w)
    crop_h = np.where(missed, fallback_h, crop_h)
    top = np.where(missed, (heights - crop_h) / 2, top)
    left = np.where(missed, (widths - crop_w) / 2, left)
    return np.stack([left, top, left + crop_w, top + crop_h], axis=-1)


def _bilinear_kernel(x):
    return np.maximum(1.0 - np.abs(x), 0.0)


def _bicubic_kernel(x, a=-0.5):  # Keys' cubic with a = -0.5, PIL's BICUBIC
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


_KERNELS = {"bilinear": (_bilinear_kernel, 1.0), "bicubic": (_bicubic_kernel, 2.0)}


def resample_weights(in_size: int, out_size: int, starts, ends, resample: str) -> np.ndarray:
    """(B, out_size, in_size) rows of PIL's resampling filter for source spans [start, end).

    Same definition as PIL's resize with `box`: output pixel o samples at
    start + (o + 0.5) * scale; when shrinking, the kernel widens by the scale
    (antialiasing); each row is normalised to sum to one.
    """
    kernel, support = _KERNELS[resample]
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    scale = (ends - starts) / out_size
    filter_scale = np.maximum(scale, 1.0)[:, None, None]
    centers = starts[:, None, None] + (np.arange(out_size)[None, :, None] + 0.5) * scale[:, None, None]
    offsets = np.arange(in_size)[None, None, :] + 0.5 - centers
    weights = kernel(offsets / filter_scale)
    # PIL only visits source pixels within the (widened) support of the center.
    reach = support * filter_scale
    first = np.maximum(np.trunc(centers - reach + 0.5), 0)
    last = np.minimum(np.trunc(centers + reach + 0.5), in_size)
    index = np.arange(in_size)[None, None, :]
    weights = np.where((index >= first) & (index < last), weights, 0.0)
    total = weights.sum(axis=-1, keepdims=True)
    return (weights / np.where(total == 0, 1.0, total)).astype(np.float32)


def resample_float_batch(images: np.ndarray, boxes: np.ndarray, out_hw: tuple[int, int], resample: str) -> np.ndarray:
    """float32 (B, H, W, C) images, (B, 4) boxes -> (B, h, w, C), as separable matrix products."""
    batch, height, width, channels = images.shape
    rows = resample_weights(height, out_hw[0], boxes[:, 1], boxes[:, 3], resample)  # (B, h, H)
    cols = resample_weights(width, out_hw[1], boxes[:, 0], boxes[:, 2], resample)  # (B, w, W)
    tall = np.matmul(rows, images.reshape(batch, height, width * channels)).reshape(batch, out_hw[0], width, channels)
    # (B, h, C, W) @ (B, 1, W, w): long rows, which numpy multiplies faster than (w, W) @ (W, C).
    return np.matmul(tall.transpose(0, 1, 3, 2), cols.transpose(0, 2, 1)[:, None]).transpose(0, 1, 3, 2)


def resample_box(pixels: np.ndarray, box: Sequence[float], out_hw: tuple[int, int], resample: str) -> np.ndarray:
    """One (H, W, C) uint8 or float32 image, box -> (h, w, C) in the same dtype (PIL for uint8)."""
    height, width = pixels.shape[:2]
    box = tuple(float(b) for b in box)
    if out_hw == (height, width) and box == (0.0, 0.0, float(width), float(height)):
        return pixels
    size, method = (out_hw[1], out_hw[0]), RESAMPLE_FILTERS[resample]
    if pixels.dtype == np.uint8 and pixels.shape[-1] in (1, 3):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        out = np.asarray(image.resize(size, method, box=box))
        return out[..., None] if out.ndim == 2 else out
    # PIL's 32-bit float mode holds one plane.
    planes = [Image.fromarray(np.ascontiguousarray(pixels[..., c], np.float32)) for c in range(pixels.shape[-1])]
    return np.stack([np.asarray(plane.resize(size, method, box=box)) for plane in planes], axis=-1)


def batched_resampling_pays(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether the dense matrix products beat PIL one image at a time (measured on CPU:
    about 10x faster for digits' 8 px -> 8..32 px, far slower for 32 -> 224 px)."""
    (height, width), (out_h, out_w) = in_hw, out_hw
    return out_h * height * width + out_h * out_w * width <= 65536


def stack_unit_range(images: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """Stack images; return them with the factor that maps them to [0, 1] (1/255 for uint8)."""
    if all(image.dtype == np.uint8 for image in images):
        return np.stack(images), 1.0 / 255.0
    return np.stack([im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]), 1.0


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Pixels -> normalised float32 (B, h, w, channels), for a batch of examples.

    train and augment: random-resized crop, then a horizontal flip with
    probability 1/2 if `flip`, drawn from per-example uniforms (randomness.py).
    Otherwise (eval, or augment=False): resize so the image is image_size /
    crop_fraction, then center crop. Then (x - mean) / std on x in [0, 1].
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
    rand_augment: RandAugment | None = None  # --aa: on the cropped uint8 image, before the flip (train only)
    erasing: RandomErasing | None = None  # --reprob: on the normalised image, last (train only)

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

    @property
    def _augments_pixels(self) -> bool:
        return self.random and self.rand_augment is not None

    def _rand_augment(self, out: np.ndarray, unit: float, u: np.ndarray) -> tuple[np.ndarray, float]:
        """RandAugment each (h, w, C) crop on uint8 (float crops are quantised first), seeded by its uniforms."""
        if out.dtype != np.uint8:
            out = np.clip(np.rint(out * (unit * 255.0)), 0, 255).astype(np.uint8)
        fill = tuple(int(round(255 * m)) for m in self.mean)
        resample = RESAMPLE_FILTERS[self.resample]
        # The uniforms are a pure function of (seed, position), so these generators are too.
        seeds = np.floor(u * 2.0**32).astype(np.uint64)
        augmented = [self.rand_augment(image, np.random.default_rng(seed), fill, resample)
                     for image, seed in zip(out, seeds)]
        return np.stack(augmented), 1.0 / 255.0

    def _geometry(self, heights, widths, u: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.random:
            boxes = random_resized_crop_boxes(heights, widths, u, self.crop_scale, self.crop_ratio)
            flips = (u[:, -1] < 0.5) if self.flip else np.zeros(len(u), bool)
            return boxes, flips
        return center_crop_boxes(heights, widths, self.image_size, self.crop_fraction), np.zeros(len(heights), bool)

    def __call__(self, images: np.ndarray | Sequence[np.ndarray], u: np.ndarray | None = None) -> np.ndarray:
        """images: an (B, H, W, C) array or a list of (H, W, C) arrays of any sizes;
        u: (B, UNIFORMS_PER_EXAMPLE) uniforms, needed when the transform is random."""
        if isinstance(images, np.ndarray):
            heights, widths = np.full(len(images), images.shape[1]), np.full(len(images), images.shape[2])
        else:
            heights, widths = [image.shape[0] for image in images], [image.shape[1] for image in images]
        boxes, flips = self._geometry(heights, widths, u)
        batched = isinstance(images, np.ndarray) and images.dtype == np.float32 and not self._augments_pixels
        if batched and batched_resampling_pays(images.shape[1:3], self.image_size):
            out, unit = resample_float_batch(images, boxes, self.image_size, self.resample), 1.0
        else:
            out, unit = stack_unit_range(
                [resample_box(im, box, self.image_size, self.resample) for im, box in zip(images, boxes)]
            )
        if self._augments_pixels:
            out, unit = self._rand_augment(out, unit, u)
        if flips.any():
            out[flips] = out[flips, :, ::-1]
        # (x * unit - mean) / std in one multiply-add; broadcasting a one-channel
        # image against per-channel mean/std replicates it.
        std = np.asarray(self.std, np.float32)
        scale, offset = np.float32(unit) / std, np.asarray(self.mean, np.float32) / std
        out = out.astype(np.float32) * scale - offset
        if self.random and self.erasing is not None and self.erasing.prob > 0:
            # A generator per image from its uniforms (reversed, so not the RandAugment stream).
            for image, seed in zip(out, np.floor(u[:, ::-1] * 2.0**32).astype(np.uint64)):
                self.erasing(image, np.random.default_rng(seed))
        return out
