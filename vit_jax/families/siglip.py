"""SigLIP's vision tower (Zhai et al. 2023): no class token, a MAP head (a learned probe attending over the
tokens) pools, no classifier; tanh GELU in big_vision, inputs 0.5/0.5."""

from vit_jax.families.family import Family, TimmArchitecture

PIXELS = dict(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
_SIGLIP = dict(classifier="map", num_classes=0, gelu="tanh")
_SO400M = dict(patch_size=14, hidden_size=1152, mlp_dim=4304, num_heads=16, num_layers=27)  # mlp_ratio 3.7362
_TIMM = dict(layer_norm_eps=1e-6, classifier="map", mlp_type="gelu", rope=False, distilled=False, **PIXELS,
             posemb_resize="torch_bicubic_antialias")

_presets = {("SigLIP-B_16" + ("" if size == 224 else f"_{size}")): dict(variant="B", patch=16, image_size=size,
                                                                        **_SIGLIP)
            for size in (224, 256, 384)}
_presets["SigLIP-So400m_14"] = dict(**_SO400M, **_SIGLIP)
# timm's 384 px So400m/14: its 14 px convolution covers 378 of the 384 pixels (27 x 27 patches); the same weights.
_presets["SigLIP-So400m_14_384"] = dict(image_size=378, **_SO400M, **_SIGLIP)

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's
# vit_{base_patch16,so400m_patch14}_siglip_{224,256,384} (no head).
_GOLDEN_PARAMS = {
    "SigLIP-B_16": 92_884_224,
    "SigLIP-B_16_256": 92_930_304,
    "SigLIP-B_16_384": 93_176_064,
    "SigLIP-So400m_14": 427_680_704,
    "SigLIP-So400m_14_384": 428_225_600,
}

FAMILY = Family(
    name="SigLIP",
    summary="no class token, a MAP head pools, no classifier",
    presets=_presets,
    timm_architectures=(
        # timm builds these SigLIPs with gelu_tanh, the others with the exact GELU
        TimmArchitecture(r"vit_base_patch32_siglip_256|vit_large_patch16_siglip_512|vit_so400m_patch16_siglip_\d+",
                         "vit_base_patch32_siglip_256", dict(_TIMM, gelu="tanh")),
        TimmArchitecture(r"vit_(base|large|so400m)_patch\d+_siglip_\d+", "vit_base_patch16_siglip_224",
                         dict(_TIMM, gelu="exact")),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={"SigLIP-B_16": "vit_base_patch16_siglip_224", "SigLIP-B_16_256": "vit_base_patch16_siglip_256",
                  "SigLIP-B_16_384": "vit_base_patch16_siglip_384", "SigLIP-So400m_14": "vit_so400m_patch14_siglip_224",
                  "SigLIP-So400m_14_384": "vit_so400m_patch14_siglip_384"},
    pixels=PIXELS,
    transformers_outputs={"SiglipVisionModel": "pooler_output"},
)
