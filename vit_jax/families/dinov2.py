"""DINOv2 (Oquab et al. 2023): LayerScale, features without a head, 518 px; with registers (Darcet et al.
2024), register tokens and a position embedding over the patches only; the giant model's packed SwiGLU MLP."""

from typing import Any

from vit_jax.families.family import (
    IMAGENET_PIXELS,
    TIMM_NUMERICS,
    Family,
    Names,
    TimmArchitecture,
    TransformersLayout,
    standard_presets,
)

_TIMM = dict(TIMM_NUMERICS, **IMAGENET_PIXELS)
_VARIANTS = (("S", "small"), ("B", "base"), ("L", "large"))

_presets = {}
for _name, _fields in standard_presets("DINOv2", ("S_14", "B_14", "L_14"), **_TIMM, image_size=518,
                                       layer_scale=True, num_classes=0).items():
    _presets[_name] = _fields
    # with registers, timm's layout: no class slot in the position embedding
    _presets[f"{_name}_reg4"] = dict(_fields, num_register_tokens=4, posemb_class_slot=False)
_presets["DINOv2-g_14"] = dict(image_size=518, patch_size=14, hidden_size=1536, mlp_dim=4096, num_heads=24,
                               num_layers=40, mlp_type="swiglu_packed", layer_scale=True, num_classes=0, **_TIMM)

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's vit_*_patch14_dinov2,
# vit_*_patch14_reg4_dinov2 and vit_giant_patch14_dinov2 (no head).
_GOLDEN_PARAMS = {
    "DINOv2-S_14": 22_056_192,
    "DINOv2-B_14": 86_579_712,
    "DINOv2-L_14": 304_367_616,
    "DINOv2-S_14_reg4": 22_057_344,
    "DINOv2-B_14_reg4": 86_582_016,
    "DINOv2-L_14_reg4": 304_370_688,
    "DINOv2-g_14": 1_136_479_232,
}

# -- transformers: Dinov2Model and Dinov2WithRegistersModel --------------------------------------------------
_LAYER = "encoder.layer.{i}"  # the hub's names (read and written); transformers 5 renames on load
_MLP_RATIO = 4  # Dinov2Config's default; transformers 5 types it int (a float is refused on load)


def _transformers_names(registers: bool, swiglu: bool) -> Names:
    """DINOv2's names; `swiglu`: the SwiGLU MLP's names are the ones written (both MLPs' names are read).

    transformers' Dinov2SwiGLUFFN is saved as `weights_in` (D -> 2 x gated width; its first half the gate,
    chunk order as timm's SwiGLUPacked fc1) and `weights_out`; transformers 5 splits weights_in on load
    into gate_proj and up_proj and renames weights_out to down_proj.
    """
    gelu = [("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.fc1.{{p}}"),
            ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.fc2.{{p}}")]
    packed = [("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.weights_in.{{p}}"),
              ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.weights_out.{{p}}")]
    entries = [
        ("cls_token", "embeddings.cls_token"),
        ("mask_token", "embeddings.mask_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
        ("blocks.{i}.norm1.{p}", f"{_LAYER}.norm1.{{p}}"),
        ("blocks.{i}.attn.qkv.{p}",
         tuple(f"{_LAYER}.attention.attention.{n}.{{p}}" for n in ("query", "key", "value"))),
        ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.attention.output.dense.{{p}}"),
        ("blocks.{i}.ls1.gamma", f"{_LAYER}.layer_scale1.lambda1"),
        ("blocks.{i}.norm2.{p}", f"{_LAYER}.norm2.{{p}}"),
        *(packed + gelu if swiglu else gelu + packed),
        ("blocks.{i}.ls2.gamma", f"{_LAYER}.layer_scale2.lambda1"),
        ("norm.{p}", "layernorm.{p}"),
        # transformers 5 names, read only
        ("blocks.{i}.attn.qkv.{p}", tuple(f"{_LAYER}.attention.{n}_proj.{{p}}" for n in "qkv")),
        ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.attention.o_proj.{{p}}"),
        ("blocks.{i}.mlp.fc1.{p}", (f"{_LAYER}.mlp.gate_proj.{{p}}", f"{_LAYER}.mlp.up_proj.{{p}}")),
        ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.down_proj.{{p}}"),
    ]
    return tuple(entries + ([("reg_token", "embeddings.register_tokens")] if registers else []))


def transformers_mlp_width(hidden_size: int, mlp_ratio: float, swiglu: bool) -> int:
    """The width fc2 reads in transformers' DINOv2: int(hidden_size * mlp_ratio); with use_swiglu_ffn, two thirds
    of that rounded up to a multiple of 8 (Dinov2SwiGLUFFN; DINOv2-g: 1536 x 4 -> 4096, timm's width)."""
    width = int(hidden_size * mlp_ratio)
    return (int(width * 2 / 3) + 7) // 8 * 8 if swiglu else width


def transformers_mlp_ratio(config) -> int | None:
    """The integer mlp_ratio with which transformers builds `config`'s MLP width (the smallest), or None."""
    swiglu = config.mlp_type == "swiglu_packed"
    return next((r for r in _ratios(config)
                 if transformers_mlp_width(config.hidden_size, r, swiglu) == config.mlp_dim), None)


def _ratios(config) -> range:
    return range(1, 2 * config.mlp_dim // config.hidden_size + 3)  # beyond the widest (GELU's mlp_dim / hidden)


def _stated(hf: dict[str, Any]) -> dict[str, Any]:
    """The MLP transformers builds from mlp_ratio and use_swiglu_ffn (its config has no intermediate_size)."""
    swiglu = bool(hf.get("use_swiglu_ffn", False))
    fields: dict[str, Any] = {"mlp_type": "swiglu_packed" if swiglu else "gelu"}
    if "hidden_size" in hf:
        fields["mlp_dim"] = transformers_mlp_width(hf["hidden_size"], hf.get("mlp_ratio", _MLP_RATIO), swiglu)
    return fields


def _problems(config) -> list[str]:
    if transformers_mlp_ratio(config) is not None:
        return []
    if config.mlp_type != "swiglu_packed":
        return [f"mlp_dim {config.mlp_dim} (DINOv2's config states an integer mlp_ratio of hidden_size)"]
    near = [transformers_mlp_width(config.hidden_size, r, True) for r in _ratios(config)]
    return [f"mlp_dim {config.mlp_dim} (transformers' DINOv2 SwiGLU is (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) "
            f"// 8 * 8 wide for an integer mlp_ratio; at hidden_size {config.hidden_size}: {near})"]


def _config_json(model_type: str):
    def config_json(config, common: dict[str, Any]) -> dict[str, Any]:
        out = dict(common, mlp_ratio=transformers_mlp_ratio(config), qkv_bias=config.qkv_bias,
                   layerscale_value=config.layer_scale_init, use_swiglu_ffn=config.mlp_type == "swiglu_packed",
                   use_mask_token=config.mask_token)
        if config.num_register_tokens:
            out["num_register_tokens"] = config.num_register_tokens
        return {"model_type": model_type, "architectures": [
            "Dinov2WithRegistersModel" if config.num_register_tokens else "Dinov2Model"], **out}
    return config_json


def _transformers_layout(registers: bool) -> TransformersLayout:
    model_type = "dinov2_with_registers" if registers else "dinov2"
    return TransformersLayout(
        model_type=model_type,
        classes=("Dinov2WithRegistersModel",) if registers else ("Dinov2Model",),
        names=_transformers_names(registers, False),
        swiglu_names=_transformers_names(registers, True),
        numerics={"gelu": "exact", "layer_norm_eps": 1e-6},
        fixed=dict(posemb_class_slot=True, classifier="token", layer_scale=True, pre_norm=False, distilled=False),
        config_json=_config_json(model_type),
        chosen_for=lambda c: (c.layer_scale and not (c.distilled or c.pre_norm)
                              and bool(c.num_register_tokens) == registers),
        mlp_types=("gelu", "swiglu_packed"),
        has_head=False,
        registers=registers,
        # the registers' class always holds one (use_mask_token is Dinov2Model's only); inference never reads it
        mask_token="always" if registers else "held",
        refused_tensors={"classifier.weight": "Dinov2ForImageClassification's head reads the class token "
                         "concatenated with the patch tokens' mean, which this model has no option for; save its "
                         "backbone (model.dinov2.save_pretrained) and convert that"},
        stated=_stated,
        problems=_problems,
    )


FAMILY = Family(
    name="DINOv2",
    summary="LayerScale and no head; register tokens; the giant's packed SwiGLU MLP",
    presets=_presets,
    timm_architectures=(
        TimmArchitecture(r"vit_(small|base|large)_patch14_reg\d+_dinov2", "vit_small_patch14_reg4_dinov2",
                         dict(_TIMM, posemb_class_slot=False, distilled=False, layer_scale_init=1e-5)),
        TimmArchitecture(r"vit_(small|base|large)_patch14_dinov2", "vit_small_patch14_dinov2",
                         dict(_TIMM, distilled=False, layer_scale_init=1e-5)),
        # timm builds the giant with mlp_layer=SwiGLUPacked and act_layer=SiLU, which the architecture fixes
        # (config.json cannot name a class)
        TimmArchitecture(r"vit_giant_patch14_(reg\d+_)?dinov2", "vit_giant_patch14_dinov2",
                         dict(layer_norm_eps=1e-6, mlp_type="swiglu_packed", rope=False, distilled=False,
                              layer_scale_init=1e-5, posemb_resize="torch_bicubic_antialias", **IMAGENET_PIXELS),
                         class_args=("mlp_layer", "act_layer")),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={
        **{f"DINOv2-{v}_14": f"vit_{n}_patch14_dinov2" for v, n in _VARIANTS},
        **{f"DINOv2-{v}_14_reg4": f"vit_{n}_patch14_reg4_dinov2" for v, n in _VARIANTS},
        "DINOv2-g_14": "vit_giant_patch14_dinov2",
    },
    transformers=(_transformers_layout(False), _transformers_layout(True)),
    transformers_outputs={"Dinov2Model": "pooler_output", "Dinov2WithRegistersModel": "pooler_output"},
)
