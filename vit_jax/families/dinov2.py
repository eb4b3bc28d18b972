"""DINOv2 (Oquab et al. 2023): LayerScale, features without a head, 518 px; with registers (Darcet et al.
2024), register tokens and a position embedding over the patches only; the giant model's packed SwiGLU MLP."""

from vit_jax.families.family import IMAGENET_PIXELS, TIMM_NUMERICS, Family, TimmArchitecture, standard_presets

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

FAMILY = Family(
    name="DINOv2",
    summary="LayerScale and no head; register tokens; the giant's packed SwiGLU MLP",
    presets=_presets,
    timm_architectures=(
        TimmArchitecture(r"vit_(small|base|large)_patch14_reg\d+_dinov2", "vit_small_patch14_reg4_dinov2",
                         dict(_TIMM, posemb_class_slot=False, distilled=False, layer_scale_init=1e-5)),
        TimmArchitecture(r"vit_(small|base|large)_patch14_dinov2", "vit_small_patch14_dinov2",
                         dict(_TIMM, distilled=False, layer_scale_init=1e-5)),
        # timm builds the giant with mlp_layer=SwiGLUPacked, which the architecture fixes (config.json cannot
        # name a class)
        TimmArchitecture(r"vit_giant_patch14_(reg\d+_)?dinov2", "vit_giant_patch14_dinov2",
                         dict(layer_norm_eps=1e-6, mlp_type="swiglu_packed", rope=False, distilled=False,
                              layer_scale_init=1e-5, posemb_resize="torch_bicubic_antialias", **IMAGENET_PIXELS)),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={
        **{f"DINOv2-{v}_14": f"vit_{n}_patch14_dinov2" for v, n in _VARIANTS},
        **{f"DINOv2-{v}_14_reg4": f"vit_{n}_patch14_reg4_dinov2" for v, n in _VARIANTS},
        "DINOv2-g_14": "vit_giant_patch14_dinov2",
    },
)
