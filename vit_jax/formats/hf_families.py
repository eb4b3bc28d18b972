"""Hugging Face transformers directories of the families (vit_jax/families): each family module declares its
transformers layouts (`TransformersLayout`: `model_type`, classes, names, numerics, config fields), and this
module reads and writes them. Names are renames of timm's (as the plain HF ViT's in hf.py); some tensors are
stored without timm's batch axes; task classes wrap the base model; a two-tower model may be read for its
vision tower. Written back, a directory loads with `from_pretrained` into the class of its `architectures`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.families import FAMILIES as REGISTRY
from vit_jax.families.family import TransformersLayout
from vit_jax.formats.base import ConversionError, TensorSource, vit_pytorch_option_problems
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

_ACTIVATIONS = {"gelu": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "quick_gelu": "quick"}
_HF_ACT = {"exact": "gelu", "tanh": "gelu_pytorch_tanh", "quick": "quick_gelu"}


@dataclasses.dataclass(frozen=True)
class Family:
    """A transformers layout with its rename tables built, and its family's pixel statistics."""

    layout: TransformersLayout
    table: RenameTable
    swiglu_table: RenameTable | None
    pixels: dict[str, tuple[float, ...]]

    def __getattr__(self, name: str) -> Any:  # the layout's declarations (model_type, wrapper, fixed, ...)
        return getattr(self.layout, name)


def _families() -> dict[str, Family]:
    """model_type -> Family, over the registry; a whole two-tower model's model_type reads as its tower."""
    out = {}
    for family in REGISTRY:
        for layout in family.transformers:
            swiglu = RenameTable(layout.swiglu_names) if layout.swiglu_names else None
            out[layout.model_type] = Family(layout, RenameTable(layout.names), swiglu, dict(family.pixels))
            if layout.whole_model:
                out[layout.whole_model[0]] = out[layout.model_type]
    return out


FAMILIES = _families()


def _tower_config(family: Family, data: dict[str, Any]) -> dict[str, Any]:
    whole = family.whole_model
    return data.get(whole[1], data) if whole and data.get("model_type") == whole[0] else data


def stated_fields(family: Family, data: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields a family's config.json states (a two-tower model's under its tower's config)."""
    hf = _tower_config(family, data)
    act = hf.get("hidden_act", _HF_ACT[family.numerics["gelu"]])
    if act not in _ACTIVATIONS:
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    # transformers resizes position grids with F.interpolate(mode='bicubic', align_corners=False)
    fields = {**family.fixed, "posemb_resize": "torch_bicubic", "gelu": _ACTIVATIONS[act],
              "layer_norm_eps": hf.get("layer_norm_eps", family.numerics["layer_norm_eps"])}
    renames = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
               "image_size": "image_size", "patch_size": "patch_size", "num_channels": "num_channels",
               "qkv_bias": "qkv_bias", "layerscale_value": "layer_scale_init",
               "num_register_tokens": "num_register_tokens", "intermediate_size": "mlp_dim"}
    fields.update({ours: hf[theirs] for theirs, ours in renames.items() if theirs in hf})
    fields.update(family.stated(hf))
    fields["name"] = (data.get("architectures") or [family.model_type])[0]
    return fields


def _reshaped(source: TensorSource, family: Family) -> TensorSource:
    """Tensors stored without timm's batch axes (a class embedding (D,), a position embedding (N, D))
    under timm's shapes (1, 1, D), (1, N, D)."""
    extra = {"cls_token": 2, "pos_embed": 1}
    for key in family.unbatched:
        if key in source.shapes:
            source.shapes[key] = (1,) * extra[key] + tuple(source.shapes[key])
    inner = source.loader
    source.loader = lambda key: inner(key).reshape(source.shapes[key]) if key in family.unbatched else inner(key)
    return source


def read(path: Path, weights: Path, data: dict[str, Any]) -> TensorSource:
    """A family's directory (or weights file beside its config.json) as a timm-named source."""
    family = FAMILIES[data["model_type"]]
    source = read_file(weights, "hf", "hf", family.numerics)
    whole = family.whole_model
    other = whole[2] if whole and data["model_type"] == whole[0] else ()
    keys = [k for k in source.shapes if not (other and k.startswith(other))]
    if len(keys) < len(source.shapes):
        source.notes.append(f"ignored {len(source.shapes) - len(keys)} tensors of the other tower "
                            f"({', '.join(other)}...)")
    renamed = {(k[len(family.wrapper):] if family.wrapper and k.startswith(family.wrapper) else k): k for k in keys}
    inner = TensorSource(path=source.path, format="hf", naming="hf", shapes={k: source.shapes[v] for k, v in
                         renamed.items()}, loader=lambda k: source.load(renamed[k]), names=renamed,
                         numerics=source.numerics, notes=source.notes)
    for tensor, why in family.refused_tensors.items():
        if tensor in inner.shapes:
            raise ConversionError(f"{path}: {tensor!r}: {why}")
    out = _reshaped(family.table.source_as_timm(inner, f"Hugging Face {family.model_type}"), family)
    out.stated = {**stated_fields(family, data, path), **family.pixels}
    return out


def family_for(config) -> Family | None:
    """The layout a config is written as: its source's (config.name, a transformers class), else the one its
    options choose."""
    for family in FAMILIES.values():
        if config.name in family.classes:
            return family
    return next((family for family in FAMILIES.values() if family.chosen_for(config)), None)


def check_expressible(config, family: Family) -> None:
    problems = [f"{field}={getattr(config, field)!r} (expected {value!r})" for field, value in family.fixed.items()
                if getattr(config, field) != value and (field != "head_bias" or config.num_classes)]
    if config.is_hybrid or config.posemb != "learn" or config.representation_size is not None or config.fc_norm:
        problems.append("a ResNet stem, fixed position embeddings, representation_size or fc_norm")
    problems += vit_pytorch_option_problems(config, f"Hugging Face {family.model_type}")
    if config.mlp_type not in family.mlp_types or config.mlp_norm:
        problems.append(f"mlp_type={config.mlp_type!r}{' with mlp_norm' if config.mlp_norm else ''} (expected one of "
                        f"{list(family.mlp_types)})")
    else:
        problems += family.problems(config)
    if config.rope or not config.key_bias:
        problems.append("a rotary embedding or q/v-only biases")
    if not family.has_head and config.num_classes:
        problems.append(f"num_classes={config.num_classes} ({family.classes[0]} has no head)")
    registers = config.num_register_tokens
    if family.registers is None and registers:
        problems.append(f"{registers} register tokens")
    elif family.registers is not None and family.registers != bool(registers):
        problems.append(f"num_register_tokens={registers}")
    if config.mask_token and not family.mask_token:
        problems.append("a mask token")
    if problems:
        raise ConversionError(f"Hugging Face {family.model_type} cannot express this model: {'; '.join(problems)}")


def hf_config(config, family: Family) -> dict[str, Any]:
    """config.json that transformers' config class of `family` reads back to `config`'s function."""
    common = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
              "num_attention_heads": config.num_heads, "hidden_act": _HF_ACT[config.gelu],
              "layer_norm_eps": config.layer_norm_eps, "image_size": config.image_hw[0],
              "patch_size": config.patch_hw[0], "num_channels": config.num_channels}
    return family.config_json(config, common)


def hf_names(tensors: dict[str, np.ndarray], config, family: Family) -> dict[str, np.ndarray]:
    """timm-named tensors -> the state dict of the family's class for `config`."""
    for key in family.unbatched:
        tensors[key] = tensors[key].reshape(tensors[key].shape[1 + (key == "cls_token"):])
    table = family.swiglu_table if config.mlp_type == "swiglu_packed" and family.swiglu_table else family.table
    renamed = table.rename_to_other(tensors)
    if not (family.wrapper and (config.num_classes or family.always_wrapped)):  # a task class wraps the base model
        return renamed
    return {(k if k.startswith(family.outside) else family.wrapper + k): v for k, v in renamed.items()}


def write(path: Path, tensors: dict[str, np.ndarray], config, family: Family, like: str | Path) -> None:
    check_expressible(config, family)
    if family.mask_token == "always" and "mask_token" not in tensors:
        # the class always holds one; inference never reads it: zeros, its init
        tensors["mask_token"] = np.zeros((1, config.hidden_size), tensors["cls_token"].dtype)
    state = hf_names(tensors, config, family)
    tensors.clear()
    if str(like).endswith((".safetensors", ".bin", ".pt", ".pth")):
        write_file(path, state, like, metadata={"format": "pt"})
        return
    path.mkdir()
    write_file(path / "model.safetensors", state, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config, family), indent=2))
