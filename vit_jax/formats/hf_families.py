"""Hugging Face transformers directories of today's ViT families: DINOv2 (+registers), CLIP's vision tower, DeiT.

`config.json`'s model_type picks the family: its names (renames of timm's, as the plain HF ViT's in
hf.py), the tensors stored without timm's batch axes (CLIP's class and position embeddings), the
wrappers task classes put around the base model, and the numerics the family's code computes. Written
back, a family's directory loads with `from_pretrained` into the class of its `architectures`:

    dinov2                 Dinov2Model                      LayerScale, features (no head); DINOv2-g's SwiGLU
    dinov2_with_registers  Dinov2WithRegistersModel         + register tokens (no position embedding)
    clip_vision_model      CLIPVisionModel(WithProjection)  ln_pre, QuickGELU, bias-free patch and projection
    clip                   CLIPModel: its vision tower and projection are read; written as CLIPVisionModelWithProjection
    deit                   DeiTModel (add_pooling_layer=False) / DeiTForImageClassificationWithTeacher
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.families import IMAGENET_PIXELS, clip
from vit_jax.formats.base import ConversionError, TensorSource, vit_pytorch_option_problems
from vit_jax.formats.renames import HF_VIT_BLOCK, RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

_ACTIVATIONS = {"gelu": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "quick_gelu": "quick"}
_HF_ACT = {"exact": "gelu", "tanh": "gelu_pytorch_tanh", "quick": "quick_gelu"}
_CLASSIC = "encoder.layer.{i}"  # names on the hub (read and written); transformers 5 renames on load


def _dinov2_table(registers: bool, swiglu: bool) -> RenameTable:
    """DINOv2's names; `swiglu`: the SwiGLU MLP's names are the ones written (both MLPs' names are read).

    transformers' Dinov2SwiGLUFFN is saved as `weights_in` (D -> 2 x gated width; its first half the gate,
    chunk order as timm's SwiGLUPacked fc1) and `weights_out`; transformers 5 splits weights_in on load
    into gate_proj and up_proj and renames weights_out to down_proj.
    """
    layer = _CLASSIC
    gelu = [("blocks.{i}.mlp.fc1.{p}", f"{layer}.mlp.fc1.{{p}}"), ("blocks.{i}.mlp.fc2.{p}", f"{layer}.mlp.fc2.{{p}}")]
    packed = [("blocks.{i}.mlp.fc1.{p}", f"{layer}.mlp.weights_in.{{p}}"),
              ("blocks.{i}.mlp.fc2.{p}", f"{layer}.mlp.weights_out.{{p}}")]
    entries = [
        ("cls_token", "embeddings.cls_token"),
        ("mask_token", "embeddings.mask_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
        ("blocks.{i}.norm1.{p}", f"{layer}.norm1.{{p}}"),
        ("blocks.{i}.attn.qkv.{p}", tuple(f"{layer}.attention.attention.{n}.{{p}}" for n in ("query", "key", "value"))),
        ("blocks.{i}.attn.proj.{p}", f"{layer}.attention.output.dense.{{p}}"),
        ("blocks.{i}.ls1.gamma", f"{layer}.layer_scale1.lambda1"),
        ("blocks.{i}.norm2.{p}", f"{layer}.norm2.{{p}}"),
        *(packed + gelu if swiglu else gelu + packed),
        ("blocks.{i}.ls2.gamma", f"{layer}.layer_scale2.lambda1"),
        ("norm.{p}", "layernorm.{p}"),
        # transformers 5 names, read only
        ("blocks.{i}.attn.qkv.{p}", tuple(f"{layer}.attention.{n}_proj.{{p}}" for n in "qkv")),
        ("blocks.{i}.attn.proj.{p}", f"{layer}.attention.o_proj.{{p}}"),
        ("blocks.{i}.mlp.fc1.{p}", (f"{layer}.mlp.gate_proj.{{p}}", f"{layer}.mlp.up_proj.{{p}}")),
        ("blocks.{i}.mlp.fc2.{p}", f"{layer}.mlp.down_proj.{{p}}"),
    ]
    return RenameTable(entries + ([("reg_token", "embeddings.register_tokens")] if registers else []))


_CLIP_LAYER = "encoder.layers.{i}"
_CLIP_TABLE = RenameTable([
    ("cls_token", "embeddings.class_embedding"),
    ("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
    ("pos_embed", "embeddings.position_embedding.weight"),
    ("norm_pre.{p}", "pre_layrnorm.{p}"),
    ("blocks.{i}.norm1.{p}", f"{_CLIP_LAYER}.layer_norm1.{{p}}"),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"{_CLIP_LAYER}.self_attn.{n}_proj.{{p}}" for n in "qkv")),
    ("blocks.{i}.attn.proj.{p}", f"{_CLIP_LAYER}.self_attn.out_proj.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_CLIP_LAYER}.layer_norm2.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_CLIP_LAYER}.mlp.fc1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_CLIP_LAYER}.mlp.fc2.{{p}}"),
    ("norm.{p}", "post_layernorm.{p}"),
    ("head.weight", "visual_projection.weight"),
])

_DEIT_TABLE = RenameTable([
    ("cls_token", "embeddings.cls_token"),
    ("dist_token", "embeddings.distillation_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
    *HF_VIT_BLOCK,
    ("norm.{p}", "layernorm.{p}"),
    ("head.{p}", "cls_classifier.{p}"),
    ("head_dist.{p}", "distillation_classifier.{p}"),
])


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    table: RenameTable
    numerics: dict[str, Any]  # what the family's code computes where config.json is silent (its defaults)
    fixed: dict[str, Any]  # the options every model of the family has
    swiglu_table: RenameTable | None = None  # the names written for a packed SwiGLU MLP (DINOv2-g)
    wrapper: str = ""  # the base model's attribute inside task classes, dropped on read
    outside: tuple[str, ...] = ()  # task-class tensors beside the wrapper (heads)
    unbatched: tuple[str, ...] = ()  # timm keys stored without timm's leading batch axes
    pixels: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=lambda: dict(IMAGENET_PIXELS))


_DINO = dict(posemb_class_slot=True, classifier="token", layer_scale=True, pre_norm=False, distilled=False)
FAMILIES = {
    "dinov2": Family("dinov2", _dinov2_table(False, False), {"gelu": "exact", "layer_norm_eps": 1e-6}, _DINO,
                     swiglu_table=_dinov2_table(False, True)),
    "dinov2_with_registers": Family("dinov2_with_registers", _dinov2_table(True, False),
                                    {"gelu": "exact", "layer_norm_eps": 1e-6}, _DINO,
                                    swiglu_table=_dinov2_table(True, True)),
    "clip_vision_model": Family(
        "clip_vision_model", _CLIP_TABLE, {"gelu": "quick", "layer_norm_eps": 1e-5},
        dict(pre_norm=True, patch_bias=False, head_bias=False, classifier="token", posemb_class_slot=True,
             layer_scale=False, distilled=False),
        wrapper="vision_model.", outside=("visual_projection.",), unbatched=("cls_token", "pos_embed"),
        pixels=clip.PIXELS),
    "deit": Family("deit", _DEIT_TABLE, {"gelu": "exact", "layer_norm_eps": 1e-12},
                   dict(distilled=True, classifier="token", posemb_class_slot=True, layer_scale=False,
                        pre_norm=False), wrapper="deit.", outside=("cls_classifier.", "distillation_classifier.")),
}
FAMILIES["clip"] = FAMILIES["clip_vision_model"]  # a whole CLIPModel: its vision tower
_CLIP_TEXT = ("text_model.", "text_projection.", "logit_scale")


def stated_fields(family: Family, data: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields a family's config.json states (a CLIPModel's under vision_config)."""
    hf = data.get("vision_config", data) if data.get("model_type") == "clip" else data
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
    if family.model_type.startswith("dinov2"):  # the MLP transformers builds from mlp_ratio (no intermediate_size)
        swiglu = bool(hf.get("use_swiglu_ffn", False))
        fields["mlp_type"] = "swiglu_packed" if swiglu else "gelu"
        if "hidden_size" in hf:
            fields["mlp_dim"] = dinov2_mlp_width(hf["hidden_size"], hf.get("mlp_ratio", _DINO_MLP_RATIO), swiglu)
    fields["name"] = (data.get("architectures") or [family.model_type])[0]
    return fields


_DINO_MLP_RATIO = 4  # Dinov2Config's default; transformers 5 types it int (a float is refused on load)


def dinov2_mlp_width(hidden_size: int, mlp_ratio: float, swiglu: bool) -> int:
    """The width fc2 reads in transformers' DINOv2: int(hidden_size * mlp_ratio); with use_swiglu_ffn, two thirds
    of that rounded up to a multiple of 8 (Dinov2SwiGLUFFN; DINOv2-g: 1536 x 4 -> 4096, timm's width)."""
    width = int(hidden_size * mlp_ratio)
    return (int(width * 2 / 3) + 7) // 8 * 8 if swiglu else width


def dinov2_mlp_ratio(config) -> int | None:
    """The integer mlp_ratio with which transformers builds `config`'s MLP width (the smallest), or None."""
    swiglu = config.mlp_type == "swiglu_packed"
    return next((r for r in _ratios(config) if dinov2_mlp_width(config.hidden_size, r, swiglu) == config.mlp_dim),
                None)


def _ratios(config) -> range:
    return range(1, 2 * config.mlp_dim // config.hidden_size + 3)  # beyond the widest (GELU's mlp_dim / hidden)


def _dinov2_width_problem(config) -> str:
    if config.mlp_type != "swiglu_packed":
        return f"mlp_dim {config.mlp_dim} (DINOv2's config states an integer mlp_ratio of hidden_size)"
    near = [dinov2_mlp_width(config.hidden_size, r, True) for r in _ratios(config)]
    return (f"mlp_dim {config.mlp_dim} (transformers' DINOv2 SwiGLU is (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) "
            f"// 8 * 8 wide for an integer mlp_ratio; at hidden_size {config.hidden_size}: {near})")


def _reshaped(source: TensorSource, family: Family) -> TensorSource:
    """CLIP's class embedding (D,) and position embedding (N, D) under timm's shapes (1, 1, D), (1, N, D)."""
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
    keys = [k for k in source.shapes if not (data["model_type"] == "clip" and k.startswith(_CLIP_TEXT))]
    if len(keys) < len(source.shapes):
        source.notes.append(f"ignored {len(source.shapes) - len(keys)} tensors of CLIP's text tower")
    renamed = {(k[len(family.wrapper):] if family.wrapper and k.startswith(family.wrapper) else k): k for k in keys}
    inner = TensorSource(path=source.path, format="hf", naming="hf", shapes={k: source.shapes[v] for k, v in
                         renamed.items()}, loader=lambda k: source.load(renamed[k]), names=renamed,
                         numerics=source.numerics, notes=source.notes)
    if "pooler.dense.weight" in inner.shapes and family.model_type == "deit":
        raise ConversionError(f"{path}: 'pooler.dense.weight': DeiTModel's pooler (tanh of a dense layer on the "
                              f"class token) is not part of DeiT; save the model with add_pooling_layer=False")
    if "classifier.weight" in inner.shapes and family.model_type.startswith("dinov2"):
        raise ConversionError(f"{path}: 'classifier.weight': Dinov2ForImageClassification's head reads the class token "
                              f"concatenated with the patch tokens' mean, which this model has no option for; save "
                              f"its backbone (model.dinov2.save_pretrained) and convert that")
    out = _reshaped(family.table.source_as_timm(inner, f"Hugging Face {family.model_type}"), family)
    out.stated = {**stated_fields(family, data, path), **family.pixels}
    return out


def family_for(config) -> Family | None:
    """The family a config is written as: its source's (config.name, an HF class), else the one its options say."""
    by_class = {"Dinov2Model": "dinov2", "Dinov2WithRegistersModel": "dinov2_with_registers",
                "CLIPVisionModel": "clip_vision_model", "CLIPVisionModelWithProjection": "clip_vision_model",
                "CLIPModel": "clip_vision_model", "DeiTModel": "deit",
                "DeiTForImageClassificationWithTeacher": "deit"}
    if config.name in by_class:
        return FAMILIES[by_class[config.name]]
    if config.distilled:
        return FAMILIES["deit"]
    if config.pre_norm:
        return FAMILIES["clip_vision_model"]
    if config.layer_scale:
        return FAMILIES["dinov2_with_registers" if config.num_register_tokens else "dinov2"]
    return None


def check_expressible(config, family: Family) -> None:
    problems = [f"{field}={getattr(config, field)!r} (expected {value!r})" for field, value in family.fixed.items()
                if getattr(config, field) != value and (field != "head_bias" or config.num_classes)]
    if config.is_hybrid or config.posemb != "learn" or config.representation_size is not None or config.fc_norm:
        problems.append("a ResNet stem, fixed position embeddings, representation_size or fc_norm")
    problems += vit_pytorch_option_problems(config, f"Hugging Face {family.model_type}")
    mlps = ("gelu", "swiglu_packed") if family.model_type.startswith("dinov2") else ("gelu",)
    if config.mlp_type not in mlps or config.mlp_norm:
        problems.append(f"mlp_type={config.mlp_type!r}{' with mlp_norm' if config.mlp_norm else ''} (expected one of "
                        f"{list(mlps)})")
    elif family.model_type.startswith("dinov2") and dinov2_mlp_ratio(config) is None:
        problems.append(_dinov2_width_problem(config))
    if config.rope or not config.key_bias:
        problems.append("a rotary embedding or q/v-only biases (EVA-02's)")
    if family.model_type.startswith("dinov2") and config.num_classes:
        problems.append(f"num_classes={config.num_classes} (Dinov2Model has no head)")
    if family.model_type.startswith("dinov2") and (family.model_type == "dinov2") == bool(config.num_register_tokens):
        problems.append(f"num_register_tokens={config.num_register_tokens}")
    if config.mask_token and not family.model_type.startswith("dinov2"):
        problems.append("a mask token (DINOv2's)")
    if config.num_register_tokens and family.model_type != "dinov2_with_registers":
        problems.append(f"{config.num_register_tokens} register tokens (Dinov2WithRegisters')")
    if family.model_type == "clip_vision_model" and not config.qkv_bias:
        problems.append("qkv_bias=False (CLIP's q/k/v projections have biases)")
    if problems:
        raise ConversionError(f"Hugging Face {family.model_type} cannot express this model: {'; '.join(problems)}")


def hf_config(config, family: Family) -> dict[str, Any]:
    """config.json that transformers' config class of `family` reads back to `config`'s function."""
    out = {"hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
           "num_attention_heads": config.num_heads, "hidden_act": _HF_ACT[config.gelu],
           "layer_norm_eps": config.layer_norm_eps, "image_size": config.image_hw[0],
           "patch_size": config.patch_hw[0], "num_channels": config.num_channels}
    if family.model_type.startswith("dinov2"):
        out.update(mlp_ratio=dinov2_mlp_ratio(config), qkv_bias=config.qkv_bias,
                   layerscale_value=config.layer_scale_init, use_swiglu_ffn=config.mlp_type == "swiglu_packed",
                   use_mask_token=config.mask_token)
        if config.num_register_tokens:
            out["num_register_tokens"] = config.num_register_tokens
        return {"model_type": family.model_type, "architectures": [
            "Dinov2WithRegistersModel" if config.num_register_tokens else "Dinov2Model"], **out}
    out["intermediate_size"] = config.mlp_dim
    if family.model_type == "deit":
        labels = {str(i): f"LABEL_{i}" for i in range(config.num_classes)}
        return {"model_type": "deit", "architectures": [_deit_class(config)], "qkv_bias": config.qkv_bias,
                "encoder_stride": config.patch_hw[0], **out,
                **({"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}} if labels else {})}
    return {"model_type": "clip_vision_model", "architectures": [_clip_class(config)],
            "projection_dim": config.num_classes or 512, **out}


def _deit_class(config) -> str:
    return "DeiTForImageClassificationWithTeacher" if config.num_classes else "DeiTModel"


def _clip_class(config) -> str:
    return "CLIPVisionModelWithProjection" if config.num_classes else "CLIPVisionModel"


def hf_names(tensors: dict[str, np.ndarray], config, family: Family) -> dict[str, np.ndarray]:
    """timm-named tensors -> the state dict of the family's class for `config`."""
    for key in family.unbatched:
        tensors[key] = tensors[key].reshape(tensors[key].shape[1 + (key == "cls_token"):])
    table = family.swiglu_table if config.mlp_type == "swiglu_packed" and family.swiglu_table else family.table
    renamed = table.rename_to_other(tensors)
    wrapped = (family.model_type == "deit" and config.num_classes) or (
        family.model_type == "clip_vision_model" and config.num_classes)
    if not wrapped:
        return renamed
    return {(k if k.startswith(family.outside) else family.wrapper + k): v for k, v in renamed.items()}


def write(path: Path, tensors: dict[str, np.ndarray], config, family: Family, like: str | Path) -> None:
    check_expressible(config, family)
    if family.model_type == "dinov2_with_registers" and "mask_token" not in tensors:
        # the class always holds one (use_mask_token is Dinov2Model's only); inference never reads it: zeros, its init
        tensors["mask_token"] = np.zeros((1, config.hidden_size), tensors["cls_token"].dtype)
    state = hf_names(tensors, config, family)
    tensors.clear()
    if str(like).endswith((".safetensors", ".bin", ".pt", ".pth")):
        write_file(path, state, like, metadata={"format": "pt"})
        return
    path.mkdir()
    write_file(path / "model.safetensors", state, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config, family), indent=2))
