"""Hugging Face MAP-pooled vision towers, whose layout, classes and numerics the family module declares
(vit_jax/families/siglip.py): a vision model's directory, or a two-tower model's vision tower (the other
tower's tensors are left out, with a note), optionally with a Linear patch embedding over (ph, pw, C)-ordered
pixels at a fixed square grid.

Names are renames of timm's (the mapping table's torch side), except two layouts: the position embedding is
stored without timm's batch axis, and the MAP head's packed `in_proj` is split into timm's `attn_pool.q` and
`attn_pool.kv`. Written back under the tower prefix transformers 4.x uses, the directory loads with the class's
`from_pretrained`, strict, in transformers 4.x and 5.x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.families import siglip
from vit_jax.formats.base import ConversionError, TensorSource
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

MODEL_TYPES = tuple(siglip.TRANSFORMERS_MODEL_TYPES)
_PATCH = "embeddings.patch_embedding.weight"
_POSEMB = "embeddings.position_embedding.weight"
_TOWER = siglip.TRANSFORMERS_TOWER
_QKV = siglip.TRANSFORMERS_PACKED_QKV  # split here into the two virtual parts of the rename table
TABLE = RenameTable(list(siglip.TRANSFORMERS_NAMES))
_FAMILY = siglip.FAMILY.name
_DEFAULT_CLASS = siglip.TRANSFORMERS_MODEL_TYPES[MODEL_TYPES[0]]
_LINEAR_PATCH = siglip.TRANSFORMERS_LINEAR_PATCH_CLASS


def stated_fields(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields a vision config states (a two-tower model's under "vision_config")."""
    two_tower = data.get("model_type") in siglip.TRANSFORMERS_TWO_TOWER_TYPES
    vision = data.get("vision_config", {}) if two_tower else data
    activations = siglip.TRANSFORMERS_ACTIVATIONS
    act = vision.get("hidden_act", siglip.TRANSFORMERS_DEFAULT_ACTIVATION)
    if act not in activations:
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(activations)}")
    if not vision.get("vision_use_head", True):
        raise ConversionError(f"{where}: vision_use_head is false; only {_FAMILY} towers with their MAP head convert")
    renames = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
               "intermediate_size": "mlp_dim", "layer_norm_eps": "layer_norm_eps", "image_size": "image_size",
               "patch_size": "patch_size", "num_channels": "num_channels"}
    fields = {ours: vision[theirs] for theirs, ours in renames.items() if theirs in vision}
    if "num_patches" in vision:  # the Linear patch embedding's class: a square grid at its fixed resolution
        side = int(round(vision["num_patches"] ** 0.5))
        if side * side != vision["num_patches"]:
            raise ConversionError(f"{where}: num_patches {vision['num_patches']} is not a square grid; only "
                                  f"{_LINEAR_PATCH} at a fixed square resolution converts")
        fields["image_size"] = side * vision.get("patch_size", 16)
        fields["name"] = _LINEAR_PATCH  # kept, so the way back writes its layout
    return {"gelu": activations[act], **siglip.TRANSFORMERS_FIXED, **fields}


def _tower(source: TensorSource) -> TensorSource:
    """The vision tower's tensors without the `vision_model.` prefix, in_proj split into its q and kv parts."""
    names: dict[str, str] = {}
    for key in source.shapes:
        inner = key[len(_TOWER):] if key.startswith(_TOWER) else key
        if not key.startswith(siglip.TRANSFORMERS_OTHER_TOWER):
            names[inner] = key
    if len(names) < len(source.shapes):
        source.notes.append(f"ignored {len(source.shapes) - len(names)} tensors of {_FAMILY}'s text tower and logits")
    shapes = {k: source.shapes[v] for k, v in names.items() if not k.startswith(_QKV)}
    parts: dict[str, tuple[str, slice]] = {}
    for leaf in ("weight", "bias"):
        if _QKV + leaf in names:
            full = source.shapes[names[_QKV + leaf]]
            d = full[0] // 3
            for part, rows in (("q", slice(0, d)), ("kv", slice(d, None))):
                parts[f"{_QKV}{part}_{leaf}"] = (names[_QKV + leaf], rows)
                shapes[f"{_QKV}{part}_{leaf}"] = (len(range(full[0])[rows]), *full[1:])
    if _POSEMB in shapes:
        shapes[_POSEMB] = (1, *shapes[_POSEMB])
    linear = len(shapes.get(_PATCH, ())) == 2  # a Linear patch embedding
    if linear:
        p, c = source.stated.get("patch_size", 16), source.stated.get("num_channels", 3)
        if shapes[_PATCH][1] != p * p * c:
            raise ConversionError(f"{source.path}: tensor {names[_PATCH]!r} has shape {shapes[_PATCH]}, expected "
                                  f"(hidden, {p * p * c}) for patch {p} and {c} channels")
        shapes[_PATCH] = (shapes[_PATCH][0], c, p, p)

    def load(key: str) -> np.ndarray:
        if key in parts:
            name, rows = parts[key]
            return np.ascontiguousarray(source.load(name)[rows])
        if key == _PATCH and linear:  # (D, ph*pw*C) -> (D, C, ph, pw)
            d, c, p, _ = shapes[key]
            return np.ascontiguousarray(source.load(names[key]).reshape(d, p, p, c).transpose(0, 3, 1, 2))
        return source.load(names[key]).reshape(shapes[key])

    return TensorSource(path=source.path, format=source.format, naming="hf", shapes=shapes, loader=load,
                        names={k: names[k] if k in names else f"{parts[k][0]} rows {parts[k][1].start}:"
                               f"{parts[k][1].stop or ''}" for k in shapes},
                        stated=source.stated, numerics=source.numerics, notes=source.notes)


def read(path: Path, weights: Path, data: dict[str, Any]) -> TensorSource:
    source = read_file(weights, "hf", "hf", {})
    source.stated = {**source.stated, **stated_fields(data, path / "config.json" if path.is_dir() else path)}
    return TABLE.source_as_timm(_tower(source), f"Hugging Face {_FAMILY}")


def check_expressible(config) -> None:
    problems = []
    if config.classifier != "map" or config.num_classes:
        problems.append(f"classifier {config.classifier!r} with {config.num_classes} classes ({_DEFAULT_CLASS} "
                        "pools with its MAP head and has no classifier)")
    if config.rope or config.mlp_type != "gelu" or not config.key_bias or config.layer_scale or config.pre_norm:
        problems.append("rotary embedding, SwiGLU, q/v-only biases, LayerScale or a pre-norm")
    if config.is_hybrid or config.posemb != "learn" or config.patch_norm or not config.qkv_bias:
        problems.append("a ResNet stem, fixed position embeddings, patch_norm or qkv_bias=False")
    if config.gelu == "quick" or not config.patch_bias or config.num_register_tokens:
        problems.append("QuickGELU, a bias-free patch embedding or register tokens")
    if problems:
        raise ConversionError(f"Hugging Face {_DEFAULT_CLASS} cannot express this model: {'; '.join(problems)}")


def hf_config(config, linear_patch: bool = False) -> dict[str, Any]:
    """config.json of the vision model: the Linear patch embedding's class when `linear_patch`."""
    gelu = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}[config.gelu]
    if linear_patch:
        return {**hf_config(config), "model_type": siglip.TRANSFORMERS_WRITTEN_TYPES[_LINEAR_PATCH],
                "architectures": [_LINEAR_PATCH], "num_patches": config.num_patches}
    return {"model_type": siglip.TRANSFORMERS_WRITTEN_TYPES[_DEFAULT_CLASS], "architectures": [_DEFAULT_CLASS],
            "hidden_size": config.hidden_size, "intermediate_size": config.mlp_dim,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "num_channels": config.num_channels, "image_size": config.image_hw[0], "patch_size": config.patch_hw[0],
            "hidden_act": gelu, "layer_norm_eps": config.layer_norm_eps, "vision_use_head": True}


def has_linear_patch(config) -> bool:
    """A source read from the Linear patch embedding's class keeps it (its name is the HF class)."""
    return config.name.startswith(_LINEAR_PATCH)


def write(path: Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    check_expressible(config)
    linear_patch = has_linear_patch(config)
    if linear_patch and (config.image_hw[0] != config.image_hw[1] or config.patch_hw[0] != config.patch_hw[1]):
        raise ConversionError(f"Hugging Face {_LINEAR_PATCH} cannot express this model: a non-square grid or patch")
    tensors["pos_embed"] = tensors["pos_embed"].reshape(tensors["pos_embed"].shape[1:])
    if linear_patch:  # conv (D, C, ph, pw) -> Linear over (ph, pw, C) pixels
        w = tensors["patch_embed.proj.weight"]
        tensors["patch_embed.proj.weight"] = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))
    state = TABLE.rename_to_other(tensors)
    tensors.clear()
    for leaf in ("weight", "bias"):
        state[_QKV + leaf] = np.concatenate([state.pop(f"{_QKV}q_{leaf}"), state.pop(f"{_QKV}kv_{leaf}")])
    state = {_TOWER + key: value for key, value in state.items()}
    if str(like).endswith((".safetensors", ".bin", ".pt", ".pth")):
        write_file(path, state, like, metadata={"format": "pt"})
        return
    path.mkdir()
    write_file(path / "model.safetensors", state, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config, linear_patch), indent=2))
