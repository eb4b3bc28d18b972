"""What a family of released ViTs is, as data: the facts that come from outside the project.

A family module (deit.py, dinov2.py, ...) fills one `Family`; the registry (`vit_jax.families`) lists them,
and the presets, the timm architecture table and the docs' tables loop over it. Nothing here imports the
rest of the project: a family states values, the config and the formats read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Input statistics of images scaled to [0, 1]: ImageNet's (timm, torchvision, DeiT, DINOv2, MAE).
IMAGENET_PIXELS = dict(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))
# timm's numerics: exact GELU, LayerNorm eps 1e-6, position grids resized by resample_abs_pos_embed (torch
# bicubic, antialias=True).
TIMM_NUMERICS = dict(gelu="exact", layer_norm_eps=1e-6, posemb_resize="torch_bicubic_antialias")


@dataclasses.dataclass(frozen=True)
class TimmArchitecture:
    """timm architectures whose names match `pattern`: the ViTConfig fields the name fixes that neither the
    tensors nor `model_args` show. `example` is one a writer may name."""

    pattern: str
    example: str
    fields: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # as the docs and the preset names spell it
    summary: str  # one line: what the family adds to the plain ViT
    # preset name -> ViTConfig fields; "variant" (Ti, S, B, ...) with "patch" takes the standard widths
    presets: dict[str, dict[str, Any]]
    golden_params: dict[str, int]  # preset -> its parameter count in the source library (timm's model)
    # timm's architectures of the family, in matching order (the first that matches wins)
    timm_architectures: tuple[TimmArchitecture, ...] = ()
    # preset -> timm's architecture of it (its golden parameter count is timm's model's)
    timm_presets: dict[str, str] = dataclasses.field(default_factory=dict)
    # preset -> the timm model_args that give it (where the architecture's defaults do not)
    timm_preset_model_args: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pixels: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=lambda: dict(IMAGENET_PIXELS))


def standard_presets(prefix: str, names: tuple[str, ...], **fields: Any) -> dict[str, dict[str, Any]]:
    """`{prefix}-{variant}_{patch}` for each 'B_16'-style name, with the standard widths and `fields`."""
    out = {}
    for name in names:
        variant, patch = name.split("_")
        out[f"{prefix}-{name}"] = dict(variant=variant, patch=int(patch), **fields)
    return out
