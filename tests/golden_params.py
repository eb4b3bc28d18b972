"""The presets' parameter counts (the goldens of docs/design.md), shared by the config and twin tests."""

from vit_jax.families import FAMILIES

# docs/design.md goldens: 224 px, 1000 classes, token pooling.
GOLDEN_PARAM_COUNTS = {
    "ViT-Ti_16": 5_717_416,
    "ViT-S_16": 22_050_664,
    "ViT-S_32": 22_878_952,
    "ViT-B_16": 86_567_656,
    "ViT-B_32": 88_224_232,
    "ViT-B_8": 86_576_872,
    "ViT-L_16": 304_326_632,
    "ViT-L_32": 306_535_400,
    "ViT-H_14": 632_045_800,
    # Equal to timm's vit_giant_patch14_224 and vit_gigantic_patch14_224 at num_classes=1000.
    "ViT-g_14": 1_012_611_432,
    "ViT-G_14": 1_844_440_680,
    "ViT-testing": 19_626,
    # Hybrids: equal to timm's vit_tiny_r_s16_p8_224, vit_small_r26_s32_224, vit_base_r26_s32_224,
    # vit_base_r50_s16_224 and vit_large_r50_s32_224 built with num_classes=1000.
    "R+ViT-Ti_16": 6_337_704,
    "R26+ViT-S_32": 36_431_912,
    "R26+ViT-B_32": 101_383_976,
    "R50+ViT-B_16": 98_659_112,
    "R50+ViT-L_32": 328_994_856,
    # the families' presets: their modules hold the source library's counts (vit_jax/families)
    **{name: count for family in FAMILIES for name, count in family.golden_params.items()},
}
