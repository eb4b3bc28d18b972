"""The registry of ViT families: one module each, holding every fact about the family that comes from outside
the project (presets and their parameter counts, numerics, pixel statistics, timm's architectures and
model_args, transformers' layouts).

The presets, the timm architecture table and the transformers layouts loop over `FAMILIES`; a test checks the
docs' preset tables against it. Adding a family that only
reuses existing options is one module here and one test file (docs/design.md, "How to add a family").
"""

from vit_jax.families import clip, deit, dinov2, eva02, mae, siglip
from vit_jax.families.family import IMAGENET_PIXELS, SOURCE_OUTPUTS, TIMM_NUMERICS, Family, TimmArchitecture

FAMILIES: tuple[Family, ...] = tuple(m.FAMILY for m in (deit, dinov2, clip, mae, siglip, eva02))

__all__ = ["FAMILIES", "IMAGENET_PIXELS", "SOURCE_OUTPUTS", "TIMM_NUMERICS", "Family", "TimmArchitecture",
           "timm_architectures", "timm_presets", "timm_preset_model_args", "transformers_outputs"]


def timm_architectures() -> list[TimmArchitecture]:
    return [arch for family in FAMILIES for arch in family.timm_architectures]


def timm_presets() -> dict[str, str]:
    return {name: arch for family in FAMILIES for name, arch in family.timm_presets.items()}


def timm_preset_model_args() -> dict[str, dict]:
    return {name: dict(args) for family in FAMILIES for name, args in family.timm_preset_model_args.items()}


def transformers_outputs() -> dict[str, str]:
    """transformers class -> the output of it the Flax model computes, over every family (SOURCE_OUTPUTS)."""
    return {name: output for family in FAMILIES for name, output in family.transformers_outputs.items()}
