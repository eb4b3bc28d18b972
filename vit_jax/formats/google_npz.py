"""Google's `.npz` checkpoints: flat '/'-joined Flax paths, one array each.

Read lazily (shapes from the .npy headers, arrays on demand) with
allow_pickle=False. Written with Linen names, bfloat16 stored the way
Google's files store it (2-byte void), which `np.load` gives back as '|V2'.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

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


def _header_shape(archive: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        shape, _, _ = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    return tuple(shape)


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
    return flax_source(str(path), FORMAT, shapes, lambda key: npz[key], NUMERICS)


def write(path: str | Path, flat: dict[str, np.ndarray], config=None, like=None) -> None:
    """Write '/'-joined Flax paths to an uncompressed .npz (as Google's are; bfloat16 lands as '|V2')."""
    with open(path, "wb") as f:
        np.savez(f, **flat)
