"""MAE's fine-tuned classifiers (He et al. 2022): the class token kept, the head reads the mean of the patch
tokens after fc_norm. timm builds them as its plain ViT with global_pool='avg', fc_norm=True."""

from vit_jax.families.family import IMAGENET_PIXELS, TIMM_NUMERICS, Family, standard_presets

_POOLING = dict(global_pool="avg", fc_norm=True, num_classes=1000)

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's plain vit_*_224 with
# global_pool='avg', fc_norm=True, num_classes=1000.
_GOLDEN_PARAMS = {
    "MAE-B_16": 86_567_656,
    "MAE-L_16": 304_326_632,
    "MAE-H_14": 632_045_800,
}

FAMILY = Family(
    name="MAE",
    summary="the mean of the patch tokens after fc_norm, the class token kept",
    presets=standard_presets("MAE", ("B_16", "L_16", "H_14"), **TIMM_NUMERICS, **IMAGENET_PIXELS,
                             classifier="token_gap", fc_norm=True),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={"MAE-B_16": "vit_base_patch16_224", "MAE-L_16": "vit_large_patch16_224",
                  "MAE-H_14": "vit_huge_patch14_224"},
    timm_preset_model_args={name: dict(_POOLING) for name in ("MAE-B_16", "MAE-L_16", "MAE-H_14")},
)
