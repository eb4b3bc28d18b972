"""Hugging Face SigLIP vision towers: `SiglipVisionModel` directories (`model_type` siglip_vision_model), and
the vision tower of a `SiglipModel` (`siglip`; its text tower, logit scale and bias are left out, with a note);
`Siglip2VisionModel` (`siglip2_vision_model`, `siglip2`) at its fixed resolution: the square grid of its
`num_patches`, where its per-image resize of the position grid is the identity. Siglip2 embeds pre-cut patches
with a Linear over (ph, pw, C)-ordered pixels (its processor's order): timm's convolution, transposed.

Names are renames of timm's (the mapping table's torch side), except two layouts: the position embedding is
stored without timm's batch axis, and the MAP head's `nn.MultiheadAttention` holds q, k and v as one
`in_proj` (3D, D), which is timm's `attn_pool.q` (the first D rows) and `attn_pool.kv` (the other 2D).
Numerics: tanh GELU (`gelu_pytorch_tanh`), LayerNorm eps 1e-6, inputs 0.5/0.5. Written back in transformers
4.x's names (under `vision_model.`), the directory loads with `SiglipVisionModel.from_pretrained`, strict, in
transformers 4.x and 5.x.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.formats.base import ConversionError, TensorSource
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

MODEL_TYPES = ("siglip_vision_model", "siglip", "siglip2_vision_model", "siglip2")
_PATCH = "embeddings.patch_embedding.weight"
_ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "exact", "gelu_new": "tanh"}
_LAYER = "encoder.layers.{i}"
_TOWER = "vision_model."
_QKV = "head.attention.in_proj_"  # split here into the two virtual parts below
TABLE = RenameTable([
    ("patch_embed.proj.{p}", "embeddings.patch_embedding.{p}"),
    ("pos_embed", "embeddings.position_embedding.weight"),
    ("blocks.{i}.norm1.{p}", f"{_LAYER}.layer_norm1.{{p}}"),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"{_LAYER}.self_attn.{n}_proj.{{p}}" for n in "qkv")),
    ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.self_attn.out_proj.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_LAYER}.layer_norm2.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.fc1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.fc2.{{p}}"),
    ("norm.{p}", "post_layernorm.{p}"),
    ("attn_pool.latent", "head.probe"),
    ("attn_pool.q.{p}", _QKV + "q_{p}"),
    ("attn_pool.kv.{p}", _QKV + "kv_{p}"),
    ("attn_pool.proj.{p}", "head.attention.out_proj.{p}"),
    ("attn_pool.norm.{p}", "head.layernorm.{p}"),
    ("attn_pool.mlp.fc1.{p}", "head.mlp.fc1.{p}"),
    ("attn_pool.mlp.fc2.{p}", "head.mlp.fc2.{p}"),
])


def stated_fields(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields a SigLIP vision config states (a SiglipModel's under "vision_config")."""
    vision = data.get("vision_config", {}) if data.get("model_type") in ("siglip", "siglip2") else data
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _ACTIVATIONS:
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    if not vision.get("vision_use_head", True):
        raise ConversionError(f"{where}: vision_use_head is false; only SigLIP towers with their MAP head convert")
    renames = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
               "intermediate_size": "mlp_dim", "layer_norm_eps": "layer_norm_eps", "image_size": "image_size",
               "patch_size": "patch_size", "num_channels": "num_channels"}
    fields = {ours: vision[theirs] for theirs, ours in renames.items() if theirs in vision}
    if "num_patches" in vision:  # Siglip2: a square grid of num_patches at its fixed resolution
        side = int(round(vision["num_patches"] ** 0.5))
        if side * side != vision["num_patches"]:
            raise ConversionError(f"{where}: num_patches {vision['num_patches']} is not a square grid; only "
                                  f"Siglip2 at a fixed square resolution converts")
        fields["image_size"] = side * vision.get("patch_size", 16)
        fields["name"] = "Siglip2VisionModel"  # kept, so the way back writes Siglip2's layout
    return {"gelu": _ACTIVATIONS[act], "layer_norm_eps": 1e-6, "classifier": "map", "num_classes": 0,
            "pixel_mean": (0.5, 0.5, 0.5), "pixel_std": (0.5, 0.5, 0.5), **fields}


def _tower(source: TensorSource) -> TensorSource:
    """The vision tower's tensors without the `vision_model.` prefix, in_proj split into its q and kv parts."""
    names: dict[str, str] = {}
    for key in source.shapes:
        inner = key[len(_TOWER):] if key.startswith(_TOWER) else key
        if not key.startswith(("text_model.", "logit_")):
            names[inner] = key
    if len(names) < len(source.shapes):
        source.notes.append(f"ignored {len(source.shapes) - len(names)} tensors of SigLIP's text tower and logits")
    shapes = {k: source.shapes[v] for k, v in names.items() if not k.startswith(_QKV)}
    parts: dict[str, tuple[str, slice]] = {}
    for leaf in ("weight", "bias"):
        if _QKV + leaf in names:
            full = source.shapes[names[_QKV + leaf]]
            d = full[0] // 3
            for part, rows in (("q", slice(0, d)), ("kv", slice(d, None))):
                parts[f"{_QKV}{part}_{leaf}"] = (names[_QKV + leaf], rows)
                shapes[f"{_QKV}{part}_{leaf}"] = (len(range(full[0])[rows]), *full[1:])
    if "embeddings.position_embedding.weight" in shapes:
        shapes["embeddings.position_embedding.weight"] = (1, *shapes["embeddings.position_embedding.weight"])
    linear = len(shapes.get(_PATCH, ())) == 2  # Siglip2's Linear patch embedding
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
    return TABLE.source_as_timm(_tower(source), "Hugging Face SigLIP")


def check_expressible(config) -> None:
    problems = []
    if config.classifier != "map" or config.num_classes:
        problems.append(f"classifier {config.classifier!r} with {config.num_classes} classes (SiglipVisionModel "
                        "pools with its MAP head and has no classifier)")
    if config.rope or config.mlp_type != "gelu" or not config.key_bias or config.layer_scale or config.pre_norm:
        problems.append("rotary embedding, SwiGLU, q/v-only biases, LayerScale or a pre-norm")
    if config.is_hybrid or config.posemb != "learn" or config.patch_norm or not config.qkv_bias:
        problems.append("a ResNet stem, fixed position embeddings, patch_norm or qkv_bias=False")
    if config.gelu == "quick" or not config.patch_bias or config.num_register_tokens:
        problems.append("QuickGELU, a bias-free patch embedding or register tokens")
    if problems:
        raise ConversionError(f"Hugging Face SiglipVisionModel cannot express this model: {'; '.join(problems)}")


def hf_config(config, siglip2: bool = False) -> dict[str, Any]:
    gelu = {"tanh": "gelu_pytorch_tanh", "exact": "gelu"}[config.gelu]
    if siglip2:
        return {**hf_config(config), "model_type": "siglip2_vision_model", "architectures": ["Siglip2VisionModel"],
                "num_patches": config.num_patches}
    return {"model_type": "siglip_vision_model", "architectures": ["SiglipVisionModel"],
            "hidden_size": config.hidden_size, "intermediate_size": config.mlp_dim,
            "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
            "num_channels": config.num_channels, "image_size": config.image_hw[0], "patch_size": config.patch_hw[0],
            "hidden_act": gelu, "layer_norm_eps": config.layer_norm_eps, "vision_use_head": True}


def is_siglip2(config) -> bool:
    """A Siglip2 source keeps its family (its name is the HF class); others are written as SigLIP."""
    return config.name.startswith("Siglip2")


def write(path: Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    check_expressible(config)
    siglip2 = is_siglip2(config)
    if siglip2 and (config.image_hw[0] != config.image_hw[1] or config.patch_hw[0] != config.patch_hw[1]):
        raise ConversionError("Hugging Face Siglip2VisionModel cannot express this model: a non-square grid or patch")
    tensors["pos_embed"] = tensors["pos_embed"].reshape(tensors["pos_embed"].shape[1:])
    if siglip2:  # conv (D, C, ph, pw) -> Linear over (ph, pw, C) pixels
        w = tensors["patch_embed.proj.weight"]
        tensors["patch_embed.proj.weight"] = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))
    state = TABLE.rename_to_other(tensors)
    tensors.clear()
    for leaf in ("weight", "bias"):
        state[_QKV + leaf] = np.concatenate([state.pop(f"{_QKV}q_{leaf}"), state.pop(f"{_QKV}kv_{leaf}")])
    # transformers 4.x names the tower's parameters under vision_model., and 5.x still loads those names (its
    # own save_pretrained drops the prefix, which 4.x cannot load)
    state = {_TOWER + key: value for key, value in state.items()}
    if str(like).endswith((".safetensors", ".bin", ".pt", ".pth")):
        write_file(path, state, like, metadata={"format": "pt"})
        return
    path.mkdir()
    write_file(path / "model.safetensors", state, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config, siglip2), indent=2))
