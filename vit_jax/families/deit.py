"""DeiT (Touvron et al. 2021) and DeiT III (2022): the plain ViT with timm's numerics; DeiT's distilled
models add a distillation token with its own head, DeiT III LayerScale and a position embedding over the
patches only."""

from typing import Any

from vit_jax.families.family import (
    IMAGENET_PIXELS,
    TIMM_NUMERICS,
    TRANSFORMERS_VIT_BLOCK,
    Family,
    TimmArchitecture,
    TransformersLayout,
    standard_presets,
)

_TIMM = dict(TIMM_NUMERICS, **IMAGENET_PIXELS)
_VARIANTS = (("Ti", "tiny"), ("S", "small"), ("B", "base"))
_DEIT3_VARIANTS = (("S", "small"), ("B", "base"), ("L", "large"))
_DEIT3 = dict(layer_scale=True, layer_scale_init=1e-6, posemb_class_slot=False)

_presets = {}
for _name, _fields in standard_presets("DeiT", ("Ti_16", "S_16", "B_16"), **_TIMM).items():
    _presets[_name] = _fields
    _presets[f"{_name}_distilled"] = dict(_fields, distilled=True)
_presets.update(standard_presets("DeiT3", ("S_16", "B_16", "L_16"), **_TIMM, **_DEIT3))

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's deit_*_patch16_224,
# deit_*_distilled_patch16_224 (both heads) and deit3_*_patch16_224 at 1000 classes.
_GOLDEN_PARAMS = {
    "DeiT-Ti_16": 5_717_416,
    "DeiT-S_16": 22_050_664,
    "DeiT-B_16": 86_567_656,
    "DeiT-Ti_16_distilled": 5_910_800,
    "DeiT-S_16_distilled": 22_436_432,
    "DeiT-B_16_distilled": 87_338_192,
    "DeiT3-S_16": 22_059_496,
    "DeiT3-B_16": 86_585_320,
    "DeiT3-L_16": 304_374_760,
}



def _config_json(config, common: dict[str, Any]) -> dict[str, Any]:
    """DeiTConfig: DeiTForImageClassificationWithTeacher with classes (both heads), else DeiTModel."""
    labels = {str(i): f"LABEL_{i}" for i in range(config.num_classes)}
    architecture = "DeiTForImageClassificationWithTeacher" if config.num_classes else "DeiTModel"
    return {"model_type": "deit", "architectures": [architecture], "qkv_bias": config.qkv_bias,
            "encoder_stride": config.patch_hw[0], **common, "intermediate_size": config.mlp_dim,
            **({"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}} if labels else {})}


_TRANSFORMERS = TransformersLayout(
    model_type="deit",
    classes=("DeiTModel", "DeiTForImageClassificationWithTeacher"),
    names=(
        ("cls_token", "embeddings.cls_token"),
        ("dist_token", "embeddings.distillation_token"),
        ("pos_embed", "embeddings.position_embeddings"),
        ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
        *TRANSFORMERS_VIT_BLOCK,
        ("norm.{p}", "layernorm.{p}"),
        ("head.{p}", "cls_classifier.{p}"),
        ("head_dist.{p}", "distillation_classifier.{p}"),
    ),
    numerics={"gelu": "exact", "layer_norm_eps": 1e-12},
    fixed=dict(distilled=True, classifier="token", posemb_class_slot=True, layer_scale=False, pre_norm=False),
    config_json=_config_json,
    chosen_for=lambda c: c.distilled,
    wrapper="deit.",
    outside=("cls_classifier.", "distillation_classifier."),
    refused_tensors={"pooler.dense.weight": "DeiTModel's pooler (tanh of a dense layer on the class token) is not "
                     "part of DeiT; save the model with add_pooling_layer=False"},
)

FAMILY = Family(
    name="DeiT",
    summary="DeiT's distillation token and head; DeiT III's LayerScale and class-free position embedding",
    presets=_presets,
    timm_architectures=(
        TimmArchitecture(r"deit3_(small|medium|base|large|huge)_patch(14|16)_(224|384)", "deit3_small_patch16_224",
                         dict(_TIMM, posemb_class_slot=False, distilled=False, layer_scale_init=1e-6)),
        TimmArchitecture(r"deit_(tiny|small|base)_distilled_patch16_(224|384)", "deit_base_distilled_patch16_224",
                         dict(_TIMM, distilled=True)),
        TimmArchitecture(r"deit_(tiny|small|base)_patch16_(224|384)", "deit_base_patch16_224",
                         dict(_TIMM, distilled=False)),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={
        **{f"DeiT-{v}_16": f"deit_{n}_patch16_224" for v, n in _VARIANTS},
        **{f"DeiT-{v}_16_distilled": f"deit_{n}_distilled_patch16_224" for v, n in _VARIANTS},
        **{f"DeiT3-{v}_16": f"deit3_{n}_patch16_224" for v, n in _DEIT3_VARIANTS},
    },
    transformers=(_TRANSFORMERS,),
    transformers_outputs={"DeiTForImageClassification": "logits", "DeiTForImageClassificationWithTeacher": "logits",
                          "DeiTModel": "pooler_or_class_token"},
)
