"""Image file decoding with PIL into HWC arrays with a fixed channel count."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
from PIL import Image

from vit_jax.data.errors import CorruptImageError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

FILE_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    return FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular_file(path: str) -> None:
    """Refuse what must never be opened as an image: a FIFO would block forever, a device read without end.

    A broken symbolic link counts as a corrupt image (skipped with a warning
    when training); a missing file or a special file is a DataError.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise CorruptImageError(path, f"broken symbolic link to '{os.readlink(path)}'") from None
        raise DataError(f"image file '{path}' does not exist") from None
    except OSError as error:
        raise CorruptImageError(path, f"{type(error).__name__}: {error}") from error
    if not stat.S_ISREG(mode):
        raise DataError(f"'{path}' is {file_kind(mode)}, not an image file")

# ITU-R 601-2 luma weights, the ones PIL's convert('L') uses.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return channels


def decode_image(path: str, channels: int) -> np.ndarray:
    """Decode one file to (H, W, channels): uint8, or float32 in [0, 1] for 16-bit files.

    Any PIL mode is accepted (grey, grey+alpha, RGB, RGBA, palette, CMYK,
    16-bit grey, float grey) and converted to `channels`. Raises CorruptImageError when the
    file is not a readable image, including truncated files.
    """
    check_channels(channels)
    check_regular_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # A palette image with transparency warns on convert; we drop alpha on purpose.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()  # decode now, so a truncated file fails here
                array, size = _to_array(image, channels), image.size
    except FileNotFoundError as error:
        raise DataError(f"image file '{path}' does not exist") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CorruptImageError(path, f"{type(error).__name__}: {error}") from error
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            _warn_large_image(path, size)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return array


_large_images_warned: set[str] = set()


def _warn_large_image(path: str, size: tuple[int, int]) -> None:
    """One line per file (PIL's own warning is a paragraph, repeated at every decode of the file)."""
    if path in _large_images_warned:
        return
    _large_images_warned.add(path)
    warnings.warn(f"'{path}' is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, above PIL's decompression-bomb "
                  f"threshold of {Image.MAX_IMAGE_PIXELS:,}: decoding it anyway (slow, and memory-hungry)",
                  LargeImageWarning, stacklevel=3)


class LargeImageWarning(UserWarning):
    """An image file over PIL's decompression-bomb threshold (but under its hard limit) was decoded."""


def _to_array(image: Image.Image, channels: int) -> np.ndarray:
    if image.mode.startswith("I") or image.mode == "F":
        # Wide grey modes: PIL's convert('L') clips instead of scaling. Integer
        # modes hold 16-bit samples (PNG/TIFF); float TIFFs are taken as [0, 1].
        values = np.asarray(image, dtype=np.float32)
        grey = np.clip(values / (65535.0 if image.mode.startswith("I") else 1.0), 0.0, 1.0)[..., None]
        return grey if channels == 1 else np.repeat(grey, 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")  # resolves palette transparency before dropping it
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[..., None] if array.ndim == 2 else array


def array_to_channels(images: np.ndarray, channels: int, what: str) -> np.ndarray:
    """(N, H, W[, C]) array -> (N, H, W, 1 or `channels`) in its own dtype.

    Grey stays one channel (replicated to 3 only at the end of the transform,
    which is cheaper and gives the same result); RGB(A) to grey uses luma.
    """
    check_channels(channels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"{what}: expected images shaped (N, H, W) or (N, H, W, C) with C in 1/3/4, got {images.shape}")
    if images.shape[-1] == 4:
        images = images[..., :3]
    if images.shape[-1] == 3 and channels == 1:
        grey = np.tensordot(images.astype(np.float32), LUMA_WEIGHTS, axes=([-1], [0]))[..., None]
        images = np.round(grey).astype(np.uint8) if images.dtype == np.uint8 else grey.astype(images.dtype)
    return np.ascontiguousarray(images)
