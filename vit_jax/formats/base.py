"""What every checkpoint format shares: the error type, a lazy tensor source, atomic writes.

A `TensorSource` describes a checkpoint without loading it: tensor names and
shapes up front, each tensor read on demand. Conversion then holds at most the
tensors it is converting, which keeps ViT-L/16 and larger within about two
copies of the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np

from vit_jax.options import unheld_options

# The two namings the one mapping table (vit_jax/formats/mapping.py) connects. Other
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
    # heads = q/k/v width / this, when nothing states the heads (a format's own default head width)
    default_head_dim: int | None = None

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


def vit_pytorch_option_problems(config, who: str) -> list[str]:
    """The vit-pytorch architecture options of `config` that `who` (a format holding Google's ViT) cannot hold."""
    problems = []
    if config.patch_norm:
        problems.append(f"patch_norm (vit-pytorch's normed patch embedding; {who} has a plain convolution)")
    if config.attention_head_dim is not None and config.inner_dim != config.hidden_size:
        problems.append(f"q/k/v width {config.inner_dim} != hidden_size {config.hidden_size} (attention_head_dim)")
    if not config.attention_out_proj:
        problems.append(f"attention_out_proj=False ({who} always projects the attention output)")
    return problems


def family_option_problems(config, who: str, format_name: str) -> list[str]:
    """The families' options of `config` that `who` (format `format_name`, a layout of the classic ViT only)
    cannot hold, as one problem naming them and the formats that can."""
    problems = [f"{field}={getattr(config, field)!r}" for field in unheld_options(config, format_name)]
    if config.gelu == "quick":
        problems.append("gelu 'quick'")
    return [f"{', '.join(problems)} ({who} holds the classic ViT; the timm-hub, torch, flax and google-npz "
            f"formats hold these)"] if problems else []


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


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def special_file_kind(path: str | os.PathLike) -> str | None:
    """What `path` is when writing there would destroy something other than a file's contents, else None.

    A regular file (or a symlink to one, whose link is what gets replaced), a
    directory (refused by callers for their own reasons) and a missing path
    are None; devices, FIFOs and sockets, or symlinks to them, are named.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # nothing there, or a dangling symlink: nothing to destroy
    for test, kind in _KINDS:
        if test(mode):
            return f"a symlink to {kind}" if os.path.islink(path) else kind
    return None


def file_above(path: str | os.PathLike) -> Path | None:
    """The nearest existing ancestor of `path` when it is not a directory (so `path` cannot be created), else None."""
    parent = Path(path).absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() else parent


def _existing_kind(path: Path) -> str | None:
    """What is at `path` itself (a symlink is not followed), or None when nothing is."""
    if path.is_symlink():
        return "a symlink"
    if path.is_dir():
        return "a directory"
    return "a file" if path.exists() else None


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """The one rule for every output the project writes; ConversionError when `path` may not be written.

    Never over a device, FIFO or socket (or a symlink to one), never under a
    regular file. Whatever else exists at `path` (a file, a directory, a
    symlink, which is replaced and never followed) is refused unless
    `overwrite`; even then a directory is replaced only if an earlier
    conversion wrote it (it holds vit_config.json): it may be the user's own folder.
    """
    _check_writable_kind(path)
    _check_existing(path, overwrite)


def _check_writable_kind(path: str | os.PathLike) -> None:
    kind = special_file_kind(path)
    if kind is not None:
        raise ConversionError(f"{path}: is {kind}, not a regular file; refusing to replace it (choose a file path)")
    blocking = file_above(path)
    if blocking is not None:
        raise ConversionError(f"{path}: {blocking} is a file, not a directory; expected a path whose existing parent "
                              f"is a directory")


def _check_existing(path: str | os.PathLike, overwrite: bool) -> None:
    existing = _existing_kind(Path(path))
    if existing is None:
        return
    if not overwrite:
        raise ConversionError(f"{path}: already exists ({existing}); pass --overwrite to replace it, or choose a new "
                              f"path")
    if existing == "a directory" and not (Path(path) / SIDECAR_IN_DIR).is_file():
        raise ConversionError(f"{path}: is a directory that no conversion wrote (no {SIDECAR_IN_DIR} in it); "
                              f"--overwrite replaces only files and earlier output directories: remove it yourself "
                              f"or choose a new path")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replacing_marker(path: str | os.PathLike) -> Path:
    """The file that says a multi-file write to `path` (weights + config JSON) is between its renames."""
    path = Path(path)
    return path.parent / f".{path.name}.replacing"


def _temp_name(final: Path) -> Path:
    # A fresh name (not mkstemp: its 0600 mode would stick to the output); writers create it.
    return final.parent / f".{final.name}.{secrets.token_hex(6)}.tmp"


def _finish_interrupted(first: Path) -> None:
    """Complete the renames of a write killed between them (all its temporaries were whole by then)."""
    marker = replacing_marker(first)
    if not marker.is_file():
        return
    try:
        pairs = json.loads(marker.read_text())["renames"]
    except (OSError, ValueError, KeyError, TypeError):
        pairs = []  # the marker itself was cut short: the renames had not started
    for temp, final in pairs:  # relative to the marker's directory, which may have been moved since
        temp, final = marker.parent / temp, marker.parent / final
        if temp.exists():
            if temp.is_dir() and final.is_file():
                final.unlink()
            os.replace(temp, final)
    marker.unlink()


def _remove_stale_temps(final: Path) -> None:
    """Temporaries that a killed write to `final` left beside it (orbax's own temporaries included)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}\.[0-9a-f]{{12}}\.tmp.*", re.DOTALL)
    if final.parent.is_dir():
        for entry in final.parent.iterdir():
            if pattern.fullmatch(entry.name):
                _remove(entry)


def _put_in_place(temp: Path, final: Path) -> None:
    """os.replace, also where a directory meets a file or a symlink (each removed only once `temp` is whole)."""
    if final.is_dir() and not final.is_symlink():
        aside = _temp_name(final)  # a name the next write to `final` removes if a kill stops us here
        os.replace(final, aside)
        os.replace(temp, final)
        _remove(aside)
        return
    if temp.is_dir() and (final.is_symlink() or final.exists()):
        final.unlink()  # os.replace cannot put a directory over a file
    os.replace(temp, final)


@contextlib.contextmanager
def atomic_outputs(*destinations: str | os.PathLike, overwrite: bool = False) -> Iterator[list[Path]]:
    """Temporary paths beside each destination, renamed into place only if the block succeeds.

    Each destination follows `check_output_path(final, overwrite)`: an existing
    one is refused unless `overwrite`. On any error every temporary is removed,
    so a failed conversion leaves no output behind (and an existing
    destination is untouched). With several
    destinations (weights and their config JSON) a marker file is written
    before the renames and removed after them: a reader that finds it refuses
    the pair, and the next write to the same place completes those renames.
    Temporaries left by a killed write are removed by the next write there.
    """
    finals = [Path(d).absolute() for d in destinations]
    for final in finals:
        _check_writable_kind(final)
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
    _finish_interrupted(finals[0])  # first: the pair it completes was there before the killed write began
    for final in finals:
        _check_existing(final, overwrite)
    marker = replacing_marker(finals[0]) if len(finals) > 1 else None
    for final in finals + ([marker] if marker else []):
        _remove_stale_temps(final)
    temps = [_temp_name(final) for final in finals]
    marker_temp = _temp_name(marker) if marker else None
    try:
        yield temps
        umask = os.umask(0)
        os.umask(umask)
        for temp in temps:
            if temp.is_file():  # some writers (safetensors) create files 0600; give the usual mode
                os.chmod(temp, 0o666 & ~umask)
        if marker is not None:
            renames = [[os.path.relpath(p, marker.parent) for p in pair] for pair in zip(temps, finals)]
            marker_temp.write_text(json.dumps({"renames": renames}))
            os.replace(marker_temp, marker)
        for temp, final in zip(temps, finals):
            _put_in_place(temp, final)
        if marker is not None:
            marker.unlink()
    except BaseException:
        if marker is not None and marker.exists():
            _finish_interrupted(finals[0])  # the renames had begun: finish them rather than leave a mixed pair
        for temp in temps + ([marker_temp] if marker_temp else []):
            _remove(temp)
            for entry in temp.parent.glob(glob.escape(temp.name) + "*"):  # writers' own temporaries (orbax's)
                _remove(entry)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`data` as indented JSON at `path` (a run's own file), replacing the old one only once the new one is whole."""
    with atomic_outputs(path, overwrite=True) as (temp,):
        temp.write_text(json.dumps(data, indent=2) + "\n")
