"""What every checkpoint format shares: the error type, a lazy tensor source, atomic writes.

A `TensorSource` describes a checkpoint without loading it: tensor names and
shapes up front, each tensor read on demand. Conversion then holds at most the
tensors it is converting, which keeps ViT-L/16 and larger within about two
copies of the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np

# The two namings the one mapping table (parity/mapping.py) connects. Other
# formats are renames of one of them.
FLAX, TIMM = "flax", "timm"


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file, tensor and expectation."""


@dataclasses.dataclass
class TensorSource:
    """Tensors of one checkpoint, in `naming` (FLAX '/'-paths or TIMM keys), loaded lazily.

    `names` maps a tensor's key here to its name inside the file (for error
    messages); `stated` holds config fields the checkpoint states outright
    (e.g. an HF config.json); `numerics` the numerics its framework implies.
    """

    path: str
    format: str
    naming: str
    shapes: dict[str, tuple[int, ...]]
    loader: Callable[[str], np.ndarray]
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    stated: dict[str, Any] = dataclasses.field(default_factory=dict)
    numerics: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def file_name(self, key: str) -> str:
        return self.names.get(key, key)

    def load(self, key: str) -> np.ndarray:
        """One tensor as NumPy; read failures become a ConversionError naming it."""
        try:
            array = fix_void_bfloat16(np.asarray(self.loader(key)))
        except ConversionError:
            raise
        except Exception as e:  # corrupt or truncated data surfaces only when read
            raise ConversionError(
                f"{self.path}: cannot read tensor {self.file_name(key)!r} ({type(e).__name__}: {e}); "
                f"the file is corrupt or truncated"
            ) from None
        if tuple(array.shape) != tuple(self.shapes[key]):
            raise ConversionError(
                f"{self.path}: tensor {self.file_name(key)!r} has shape {tuple(array.shape)}, "
                f"its header says {tuple(self.shapes[key])}; the file is corrupt"
            )
        return array


def fix_void_bfloat16(array: np.ndarray) -> np.ndarray:
    """bfloat16 saved by NumPy without ml_dtypes reads back as 2-byte void ('|V2'): reinterpret it."""
    if array.dtype.kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
        return array.view(ml_dtypes.bfloat16)
    return array


SIDECAR_IN_DIR = "vit_config.json"


def config_sidecar(path: str | os.PathLike, is_dir: bool | None = None) -> Path:
    """Where the ViTConfig JSON of a checkpoint lives: `x.npz` -> `x.npz.json`, `dir/` -> `dir/vit_config.json`.

    The full file name is kept so that `x.npz` and `x.safetensors` converted
    from it (possibly at another resolution) never share a config.
    """
    path = Path(path)
    if path.is_dir() if is_dir is None else is_dir:
        return path / SIDECAR_IN_DIR
    return path.with_name(path.name + ".json")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_outputs(*destinations: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths beside each destination, renamed into place only if the block succeeds.

    On any error every temporary is removed, so a failed conversion leaves no
    output behind (and an existing destination is untouched).
    """
    finals = [Path(d) for d in destinations]
    for final in finals:
        if final.is_dir():
            # Never delete a directory to make room: it may be the user's own folder.
            raise ConversionError(f"{final}: already exists as a directory; remove it or choose a new path")
    temps = []
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
        # A fresh name (not mkstemp: its 0600 mode would stick to the output); writers create it.
        temps.append(final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temps
        umask = os.umask(0)
        os.umask(umask)
        for temp, final in zip(temps, finals):
            if temp.is_file():  # some writers (safetensors) create files 0600; give the usual mode
                os.chmod(temp, 0o666 & ~umask)
            if temp.is_dir() and final.exists():
                final.unlink()  # os.replace cannot put a directory over a file
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            _remove(temp)
        raise
