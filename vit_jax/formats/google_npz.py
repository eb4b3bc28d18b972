"""Google's `.npz` checkpoints: flat '/'-joined Flax paths, one array each.

Read lazily (shapes from the .npy headers, arrays on demand, one zip member
each) with allow_pickle=False; one layer of a scanned (stacked) array is read
on its own from an uncompressed member, as `np.savez` writes them. Written with Linen names, bfloat16 stored the way
Google's files store it (2-byte void), which `np.load` gives back as '|V2'.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from vit_jax.formats.base import ConversionError, TensorSource
from vit_jax.formats.flax_names import flax_source

FORMAT = "google-npz"
EXTENSIONS = (".npz",)
# Google trained with Flax's default tanh GELU; inputs in [-1, 1].
NUMERICS = {"gelu": "tanh", "layer_norm_eps": 1e-6, "pixel_mean": (0.5, 0.5, 0.5), "pixel_std": (0.5, 0.5, 0.5)}


def is_npz(path: Path) -> bool:
    """A zip whose members are .npy files (a PyTorch zip holds data.pkl instead)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy file `f` is at the start of; `f` is left at its data."""
    version = np.lib.format.read_magic(f)
    fmt = np.lib.format
    shape, fortran_order, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    return tuple(shape), fortran_order, dtype


def _header_shape(archive: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    with archive.open(member) as f:
        return _read_header(f)[0]


def read(path: str | Path) -> TensorSource:
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ConversionError(f"{path}: holds a single array, expected an .npz archive of named arrays")
        shapes = {name: _header_shape(npz.zip, name + ".npy") for name in npz.files}
    except ConversionError:
        raise
    except Exception as e:
        raise ConversionError(f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); "
                              f"the file is corrupt or truncated") from None
    return flax_source(str(path), FORMAT, shapes, lambda key: npz[key], NUMERICS, _layer_reader(path, npz))


def _layer_reader(path: Path, npz: np.lib.npyio.NpzFile) -> Callable[[str, int], np.ndarray]:
    """Layer `index` of a stacked member: an uncompressed member's .npy bytes lie in the file as they are, so a
    layer is one seek and one read, not the whole member (a compressed or Fortran-ordered one is sliced)."""

    def load_layer(key: str, index: int) -> np.ndarray:
        info = npz.zip.getinfo(key + ".npy")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:  # deflated or encrypted
            return npz[key][index].copy()
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            *_, name_size, extra_size = struct.unpack(zipfile.structFileHeader, f.read(zipfile.sizeFileHeader))
            f.seek(name_size + extra_size, 1)  # the member's data: a .npy file
            shape, fortran_order, dtype = _read_header(f)
            if fortran_order or dtype.hasobject:
                return npz[key][index].copy()
            layer = np.empty(shape[1:], dtype)
            f.seek(index * layer.nbytes, 1)
            read = f.readinto(layer.reshape(-1).view(np.uint8))
        if read != layer.nbytes:
            raise ConversionError(f"{path}: member {key!r} is cut short in layer {index}; the file is truncated")
        return layer

    return load_layer


def write(path: str | Path, flat: dict[str, np.ndarray], config=None, like=None) -> None:
    """Write '/'-joined Flax paths to an uncompressed .npz (as Google's are; bfloat16 lands as '|V2')."""
    with open(path, "wb") as f:
        np.savez(f, **flat)
