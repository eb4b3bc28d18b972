"""OpenAI CLIP's vision tower (Radford et al. 2021): QuickGELU, LayerNorm eps 1e-5, a LayerNorm before the
blocks (ln_pre), no patch-embedding bias; the head is the projection to the joint space, without bias."""

from vit_jax.families.family import Family, TimmArchitecture, standard_presets

PIXELS = dict(pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711))
# What every timm CLIP architecture builds and its tensors must show: ln_pre, and (timm) no patch bias with it.
_TIMM = dict(layer_norm_eps=1e-5, posemb_resize="torch_bicubic_antialias", pre_norm=True, patch_bias=False,
             distilled=False, **PIXELS)
_PROJECTION = {"B": 512, "L": 768}  # the joint space's width

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's vit_*_clip_quickgelu_224 (the head
# is the projection, with timm's bias).
_GOLDEN_PARAMS = {
    "CLIP-B_16": 86_193_152,
    "CLIP-B_32": 87_849_728,
    "CLIP-L_14": 303_966_976,
}

FAMILY = Family(
    name="CLIP",
    summary="QuickGELU, ln_pre, no patch bias, a bias-free projection as the head",
    presets={name: dict(fields, num_classes=_PROJECTION[fields["variant"]])
             for name, fields in standard_presets(
                 "CLIP", ("B_16", "B_32", "L_14"), gelu="quick", layer_norm_eps=1e-5, pre_norm=True,
                 patch_bias=False, posemb_resize="torch_bicubic_antialias", **PIXELS).items()},
    timm_architectures=(
        TimmArchitecture(r"vit_(tiny|small|base|large|huge)_patch\d+_clip_quickgelu_\d+",
                         "vit_base_patch16_clip_quickgelu_224", dict(_TIMM, gelu="quick")),
        TimmArchitecture(r"vit_(tiny|small|base|large|huge)_patch\d+_clip_\d+", "vit_base_patch16_clip_224",
                         dict(_TIMM, gelu="exact")),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={"CLIP-B_16": "vit_base_patch16_clip_quickgelu_224",
                  "CLIP-B_32": "vit_base_patch32_clip_quickgelu_224",
                  "CLIP-L_14": "vit_large_patch14_clip_quickgelu_224"},
    pixels=PIXELS,
)
