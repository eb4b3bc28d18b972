"""PyTorch state dicts on disk (`.safetensors`, or `.pt/.pth/.bin` read with weights_only) and timm's naming.

The file layer here is shared by the three PyTorch namings (timm, Hugging
Face, torchvision); `read`/`write` are the `torch` format itself, whose keys
are timm's and therefore the mapping table's torch side.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from vit_jax.formats.base import TIMM, ConversionError, TensorSource

FORMAT = "torch"
EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")
# timm runs every ViT with exact GELU and LayerNorm eps 1e-6. The file does not
# say how inputs were normalised; Google-origin weights (most timm ViTs) use 0.5/0.5.
# Its hybrids standardise conv weights as (w - mean) / sqrt(var + 1e-8) and use GroupNorm eps 1e-5.
NUMERICS = {"gelu": "exact", "layer_norm_eps": 1e-6, "stem_ws_form": "var", "stem_ws_eps": 1e-8, "stem_gn_eps": 1e-5}
# Wrappers that training scripts put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module")


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header size, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    size = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 0 < size <= path.stat().st_size


def damaged_safetensors_header(path: Path) -> str | None:
    """Why a file that looks like safetensors (by name, or by the '{' after its length) is not whole, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return None
    if head[8:9] != b"{" and (path.suffix != ".safetensors" or head[:2] == b"PK"):  # a .safetensors-named zip: torch
        return None
    if len(head) < 9:
        return f"the file has {size} bytes, fewer than a header's 8-byte length and its JSON"
    declared = struct.unpack("<Q", head[:8])[0]
    if head[8:9] != b"{":
        return "it does not start with a header (an 8-byte length, then a JSON object)"
    if declared > size - 8:
        return f"the header declares {declared} bytes of JSON, the file holds {size - 8} after the length"
    return None


# safetensors dtypes read here with plain file reads (anything else goes through the library)
_SAFETENSORS_FLOATS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def _read_safetensors(path: Path) -> tuple[dict[str, tuple[int, ...]], Any, dict[str, Any]]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="numpy")  # bfloat16 comes back as ml_dtypes' type
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        metadata = handle.metadata() or {}
        with open(path, "rb") as f:  # the header the library has just checked: where each tensor's bytes are
            header_size = struct.unpack("<Q", f.read(8))[0]
            entries = json.loads(f.read(header_size))
    except Exception as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({e}); "
                              f"the file is corrupt or truncated") from None
    stated = {}
    if "vit_config" in metadata:  # written by this package: the source's full config
        try:
            stated = json.loads(metadata["vit_config"])
        except json.JSONDecodeError:
            raise ConversionError(f"{path}: metadata entry 'vit_config' is not valid JSON") from None

    def load(key: str) -> np.ndarray:
        """One tensor read from the file into a fresh array: the library's mmap would leave every page read
        resident in this process (its RSS growing to the file's size over a pass through the model)."""
        entry = entries[key]
        dtype = _SAFETENSORS_FLOATS.get(entry["dtype"])
        if dtype is None:  # not a float (refused later, with its dtype named), or a float8
            return handle.get_tensor(key)
        array = np.empty(entry["shape"], np.dtype(dtype).newbyteorder("<"))
        begin, end = entry["data_offsets"]
        if end - begin != array.nbytes:
            raise ConversionError(f"{path}: tensor {key!r} spans {end - begin} bytes in the header, its dtype "
                                  f"{entry['dtype']} and shape {tuple(entry['shape'])} need {array.nbytes}; "
                                  f"the file is corrupt")
        with open(path, "rb") as f:
            f.seek(8 + header_size + begin)
            read = f.readinto(array.reshape(-1).view(np.uint8))
        if read != array.nbytes:
            raise ConversionError(f"{path}: tensor {key!r} is cut short ({read} of {array.nbytes} bytes); the file "
                                  f"is truncated")
        return array

    return shapes, load, stated


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    import torch

    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj), None)
        if inner is None:
            raise ConversionError(
                f"{path}: no tensors found; expected a state dict (name -> tensor), possibly under "
                f"one of {list(_WRAPPER_KEYS)}, got keys {sorted(map(str, obj))[:8]}"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: entry {bad[0]!r} is not a tensor ({type(obj[bad[0]]).__name__})")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _read_pickle(path: Path) -> tuple[dict[str, tuple[int, ...]], Any]:
    import torch

    from vit_jax.formats.torch_arrays import to_numpy

    try:
        try:  # mmap: tensors are paged in as they are converted, not all at once
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(
            f"{path}: not a loadable PyTorch weights file ({first_line}); it is corrupt, truncated, "
            f"or holds objects other than tensors (only weights_only loading is allowed)"
        ) from None
    state = _unwrap(obj, path)
    return {k: tuple(v.shape) for k, v in state.items()}, lambda key: to_numpy(state[key]), {}


def read_file(path: str | Path, format_name: str, naming: str, numerics: dict[str, Any]) -> TensorSource:
    path = Path(path)
    if not is_safetensors(path):
        damage = damaged_safetensors_header(path)
        if damage is not None:
            raise ConversionError(f"{path}: the safetensors header is damaged ({damage}); the file is corrupt or "
                                  f"truncated")
    shapes, loader, stated = _read_safetensors(path) if is_safetensors(path) else _read_pickle(path)
    return TensorSource(path=str(path), format=format_name, naming=naming, shapes=shapes, loader=loader,
                        stated=stated, numerics=dict(numerics))


def write_file(path: str | Path, tensors: dict[str, np.ndarray], like: str | Path,
               metadata: dict[str, str] | None = None) -> None:
    """Write a state dict to `path` in the container `like`'s extension asks for.

    Tensors are popped from `tensors` as they are moved to torch, so the
    NumPy and torch copies of one tensor never all coexist. Only a .pt/.pth/.bin
    container needs torch; safetensors files are written from NumPy.
    """
    if str(like).endswith(".safetensors"):
        from safetensors.numpy import save_file

        # safetensors writes through a '.tmpXXXXXX' of its own beside the file, which a kill leaves behind
        # under a name no one can tie to `path`: give it a private directory, named after `path`, instead.
        private = Path(f"{path}.d")
        private.mkdir(exist_ok=True)
        save_file({key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(private / "weights"),
                  metadata=metadata)
        tensors.clear()
        os.replace(private / "weights", path)
        private.rmdir()
        return
    import torch

    from vit_jax.formats.torch_arrays import to_torch

    torch.save({key: to_torch(tensors.pop(key)) for key in list(tensors)}, path)


def classify_keys(keys: list[str]) -> str | None:
    """Which PyTorch naming a state dict uses: 'torch' (timm), 'hf', 'torchvision', 'vit-pytorch', or None."""
    keys = set(keys)
    if "patch_embed.proj.weight" in keys:
        return "torch"
    if "conv_proj.weight" in keys or any(k.startswith("encoder.layers.encoder_layer_") for k in keys):
        return "torchvision"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if "to_patch_embedding.2.weight" in keys:
        return "vit-pytorch"
    return None


def read(path: str | Path) -> TensorSource:
    return read_file(path, FORMAT, TIMM, NUMERICS)


def write(path: str | Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    write_file(path, tensors, like, metadata={"format": "pt", "vit_config": json.dumps(config.to_dict())})
