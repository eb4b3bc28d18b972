"""Flax param trees on disk: `flax.serialization` msgpack files and orbax checkpoint directories.

Both may hold the bare param tree or a wrapper (`{'params': ...}`, a train
state); `flax_names` finds the params. Orbax directories written by a
CheckpointManager (`dir/<step>/<item>/`) resolve to the latest step.

Framework-free, like the rest of vit_jax.formats: the msgpack layout is
flax.serialization's (an array is msgpack ext type 1 holding (shape, dtype
name, C-order bytes); arrays over 2**30 bytes are split into chunks), written
and read here with msgpack and NumPy; orbax arrays are read with tensorstore,
the storage library orbax itself writes them with (orbax's _METADATA names
every array's key path). Writing an orbax directory needs orbax and JAX, so
that writer is parity.convert's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np

from vit_jax.formats.base import ConversionError, TensorSource
from vit_jax.formats.flax_names import flax_source
from vit_jax.formats.mapping import flatten, unflatten

FORMAT = "flax"
EXTENSIONS = (".msgpack",)
# This project's Flax model defaults (Google's numerics) unless a config JSON says otherwise.
NUMERICS = {"gelu": "tanh", "layer_norm_eps": 1e-6}
# flax.serialization's msgpack extension types, and its largest unchunked array.
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
MAX_CHUNK_BYTES = 2**30
CHUNKED = "__msgpack_chunked_array__"


def orbax_item_dir(path: Path) -> Path | None:
    """The directory holding the tree: `path` itself, or the latest `<step>/<item>` under it."""
    if not path.is_dir():
        return None
    if (path / "_METADATA").exists():
        return path
    steps = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    candidates = [steps[-1]] if steps else [path]
    for base in candidates:
        if (base / "_METADATA").exists():
            return base
        items = [p for p in base.iterdir() if p.is_dir() and (p / "_METADATA").exists()]
        if len(items) == 1:
            return items[0]
    return None


def is_msgpack(path: Path) -> bool:
    """msgpack maps start with 0x80-0x8f (fixmap), 0xde or 0xdf."""
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except OSError:
        return False
    return len(first) == 1 and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF))


def _flatten(tree, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: expected a nested dict of arrays, got {type(tree).__name__}")
    flat = flatten(tree)
    bad = [k for k, v in flat.items() if not hasattr(v, "shape")]
    if bad:
        raise ConversionError(f"{path}: entry {bad[0]!r} is not an array ({type(flat[bad[0]]).__name__})")
    return {k: np.asarray(v) for k, v in flat.items()}


# -- msgpack, as flax.serialization writes it ---------------------------------
def _array_from_ext(data: bytes) -> np.ndarray:
    shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    dtype = ml_dtypes.bfloat16 if dtype_name == b"bfloat16" else np.dtype(dtype_name.decode())
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def _ext_unpack(code: int, data: bytes) -> Any:
    if code == EXT_NDARRAY:
        return _array_from_ext(data)
    if code == EXT_NPSCALAR:
        return _array_from_ext(data)[()]
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    return msgpack.ExtType(code, data)


def _unchunk(tree: Any) -> Any:
    """Arrays flax split into chunks ({CHUNKED: True, 'shape': {'0': ..}, 'chunks': {'0': ..}}) put back together."""
    if not isinstance(tree, dict):
        return tree
    if CHUNKED in tree:
        shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
        return np.concatenate([tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]).reshape(shape)
    return {key: _unchunk(value) for key, value in tree.items()}


def msgpack_restore(data: bytes) -> Any:
    """The tree `flax.serialization.msgpack_serialize` wrote, with NumPy leaves."""
    return _unchunk(msgpack.unpackb(data, ext_hook=_ext_unpack, raw=False, strict_map_key=False))


def _array_ext(array: np.ndarray) -> msgpack.ExtType:
    if array.dtype.hasobject or array.dtype.isalignedstruct:
        raise ConversionError(f"cannot write a {array.dtype} array to msgpack")
    payload = msgpack.packb((array.shape, array.dtype.name, array.tobytes("C")), use_bin_type=True)
    return msgpack.ExtType(EXT_NDARRAY, payload)


def _pack_leaf(array: np.ndarray, packer: msgpack.Packer) -> bytes:
    """One array leaf as flax.serialization packs it (chunked above MAX_CHUNK_BYTES)."""
    if array.nbytes <= MAX_CHUNK_BYTES:
        return packer.pack(_array_ext(array))
    step = max(1, MAX_CHUNK_BYTES // array.dtype.itemsize)
    flat = array.reshape(-1)
    chunks = {str(i): _array_ext(flat[start:start + step]) for i, start in enumerate(range(0, flat.size, step))}
    return packer.pack({CHUNKED: True, "shape": {str(i): n for i, n in enumerate(array.shape)}, "chunks": chunks})


def _write_msgpack(f, tree: dict, packer: msgpack.Packer) -> None:
    """The bytes `flax.serialization.msgpack_serialize(tree)` gives, streamed leaf by leaf.

    Serialising the whole tree at once holds the packed buffer and its bytes
    copy beside the arrays (three copies of ViT-L); here each leaf is packed,
    written and dropped from the tree.
    """
    f.write(packer.pack_map_header(len(tree)))
    for key in list(tree):
        value = tree.pop(key)
        f.write(packer.pack(key))
        if isinstance(value, dict):
            _write_msgpack(f, value, packer)
        else:
            f.write(_pack_leaf(np.asarray(value), packer))


# -- orbax directories, read with tensorstore -----------------------------------
def orbax_arrays(item: Path, prefix: str = "") -> dict[str, Any]:
    """'/'-joined key path -> an opened tensorstore array, from an orbax item directory's _METADATA.

    Only paths starting with `prefix` (a train state's 'params/' leaves out the optimizer state).
    """
    import tensorstore as ts

    metadata = json.loads((item / "_METADATA").read_text())
    driver = "zarr3" if metadata.get("use_zarr3") else "zarr"
    arrays = {}
    for entry in metadata["tree_metadata"].values():
        keys = [str(k["key"]) for k in entry["key_metadata"]]
        if not "/".join(keys).startswith(prefix):
            continue
        name = ".".join(keys)
        if metadata.get("use_ocdbt", True):
            kvstore = {"driver": "ocdbt", "base": f"file://{item.absolute()}", "path": name}
        else:
            kvstore = {"driver": "file", "path": str(item.absolute() / name)}
        arrays["/".join(keys)] = ts.open({"driver": driver, "kvstore": kvstore}, open=True).result()
    return arrays


def read_orbax(path: Path, item: Path) -> TensorSource:
    try:
        arrays = orbax_arrays(item)
        shapes = {key: tuple(array.shape) for key, array in arrays.items()}
    except Exception as e:
        raise ConversionError(f"{path}: cannot restore the orbax checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or incomplete") from None

    def load(key: str, index: int | None = None) -> np.ndarray:
        """The array, or (a scanned one) its layer `index` alone: tensorstore reads just that slice."""
        try:
            array = arrays[key] if index is None else arrays[key][index]
            return np.asarray(array.read().result())
        except Exception as e:
            raise ConversionError(f"{path}: cannot read array {key!r} of the orbax checkpoint ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or incomplete") from None

    return flax_source(str(path), FORMAT, shapes, load, NUMERICS, load)


def read(path: str | Path) -> TensorSource:
    path = Path(path)
    if path.is_dir():
        item = orbax_item_dir(path)
        if item is None:
            raise ConversionError(f"{path}: directory is not an orbax checkpoint (no _METADATA found in it "
                                  f"or in a <step>/<item> subdirectory)")
        return read_orbax(path, item)
    try:
        tree = msgpack_restore(path.read_bytes())
    except Exception as e:
        raise ConversionError(f"{path}: not a readable flax msgpack file ({type(e).__name__}: {e}); "
                              f"the file is corrupt or truncated") from None
    flat = _flatten(tree, path)
    return flax_source(str(path), FORMAT, {k: v.shape for k, v in flat.items()}, flat.__getitem__, NUMERICS)


def write(path: str | Path, flat: dict[str, np.ndarray], config=None, like: str | Path | None = None) -> None:
    """A nested param tree as a msgpack file (an orbax directory is parity.convert's to write)."""
    tree = unflatten(flat)
    flat.clear()
    with open(path, "wb") as f:
        _write_msgpack(f, tree, msgpack.Packer())
