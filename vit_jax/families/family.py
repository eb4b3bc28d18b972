"""What a family of released ViTs is, as data: the facts that come from outside the project.

A family module (one per family, in this package) fills one `Family`; the registry (`vit_jax.families`) lists them,
and the presets, the timm architecture table and the transformers layouts loop over it. Nothing here imports the
rest of the project: a family states values, the config and the formats read them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

Names = tuple[tuple[str, "str | tuple[str, ...]"], ...]  # (timm name, the other library's name(s)), a rename table

# Input statistics of images scaled to [0, 1]: ImageNet's (timm's and torchvision's default).
IMAGENET_PIXELS = dict(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))
# timm's numerics: exact GELU, LayerNorm eps 1e-6, position grids resized by resample_abs_pos_embed (torch
# bicubic, antialias=True).
TIMM_NUMERICS = dict(gelu="exact", layer_norm_eps=1e-6, posemb_resize="torch_bicubic_antialias")

# The outputs a source model can be compared on: an attribute of a transformers model's output, or
# "pooler_or_class_token" (ViTModel's pooler when it has one, else the final-norm class token) or
# "image_features" (a two-tower model's get_image_features).
SOURCE_OUTPUTS = ("logits", "pooler_output", "image_embeds", "pooler_or_class_token", "image_features")


@dataclasses.dataclass(frozen=True)
class TimmArchitecture:
    """timm architectures whose names match `pattern`: the ViTConfig fields the name fixes that neither the
    tensors nor `model_args` show. `example` is one a writer may name."""

    pattern: str
    example: str
    fields: dict[str, Any]
    # model_args that only name layer classes the architecture fixes anyway (dropped on read)
    class_args: tuple[str, ...] = ()


# A transformers ViT block (ViTModel's, which other families' classes reuse): the classic hub names, which are
# written and which every transformers version loads, then transformers 5's own names, read only (a timm key's
# first name is written).
_HF_LAYER, _HF_LAYER_V5 = "encoder.layer.{i}", "layers.{i}"
TRANSFORMERS_VIT_BLOCK: Names = (
    ("blocks.{i}.norm1.{p}", f"{_HF_LAYER}.layernorm_before.{{p}}"),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"{_HF_LAYER}.attention.attention.{n}.{{p}}" for n in ("query", "key", "value"))),
    ("blocks.{i}.attn.proj.{p}", f"{_HF_LAYER}.attention.output.dense.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_HF_LAYER}.layernorm_after.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_HF_LAYER}.intermediate.dense.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_HF_LAYER}.output.dense.{{p}}"),
    ("blocks.{i}.norm1.{p}", f"{_HF_LAYER_V5}.layernorm_before.{{p}}"),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"{_HF_LAYER_V5}.attention.{n}_proj.{{p}}" for n in "qkv")),
    ("blocks.{i}.attn.proj.{p}", f"{_HF_LAYER_V5}.attention.o_proj.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_HF_LAYER_V5}.layernorm_after.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_HF_LAYER_V5}.mlp.fc1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_HF_LAYER_V5}.mlp.fc2.{{p}}"),
)


@dataclasses.dataclass(frozen=True)
class TransformersLayout:
    """A transformers `model_type` of the family: its names, numerics and config fields, as
    vit_jax/formats/hf_families.py reads and writes them."""

    model_type: str
    classes: tuple[str, ...]  # the classes whose directories read as this layout (the first is written)
    names: Names
    numerics: dict[str, Any]  # what the family's code computes where config.json is silent (its defaults)
    fixed: dict[str, Any]  # the options every model of the layout has
    # config.json of `config` (the ViTConfig) from the fields every layout writes (`common`)
    config_json: Callable[[Any, dict[str, Any]], dict[str, Any]]
    chosen_for: Callable[[Any], bool]  # whether a config without a transformers class name is written as this
    swiglu_names: Names | None = None  # the names written for a packed SwiGLU MLP
    mlp_types: tuple[str, ...] = ("gelu",)
    wrapper: str = ""  # the base model's attribute inside task classes, dropped on read
    always_wrapped: bool = False  # every class names its tensors under `wrapper` (else only those with a head)
    outside: tuple[str, ...] = ()  # task-class tensors beside the wrapper (heads)
    unbatched: tuple[str, ...] = ()  # timm keys stored without timm's leading batch axes
    has_head: bool = True
    registers: bool | None = None  # whether its models have register tokens (None: it cannot hold any)
    mask_token: str = ""  # "": none; "held": when the config says; "always": the class always holds one
    refused_tensors: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> why it is refused
    # the fields config.json states beyond the common ones (from config.json's dict)
    stated: Callable[[dict[str, Any]], dict[str, Any]] = lambda hf: {}
    problems: Callable[[Any], list[str]] = lambda config: []  # what else the layout cannot hold
    # a whole two-tower model read for this tower: (its model_type, the key of this tower's config, the
    # prefixes of the other tower's tensors)
    whole_model: tuple[str, str, tuple[str, ...]] | None = None


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
    transformers: tuple[TransformersLayout, ...] = ()  # its transformers model_types
    # the against-source check (parity/source_models.py): transformers class -> which of its outputs the Flax
    # model computes, one of SOURCE_OUTPUTS; a class absent here is not checked, with a note
    transformers_outputs: dict[str, str] = dataclasses.field(default_factory=dict)


def standard_presets(prefix: str, names: tuple[str, ...], **fields: Any) -> dict[str, dict[str, Any]]:
    """`{prefix}-{variant}_{patch}` for each 'B_16'-style name, with the standard widths and `fields`."""
    out = {}
    for name in names:
        variant, patch = name.split("_")
        out[f"{prefix}-{name}"] = dict(variant=variant, patch=int(patch), **fields)
    return out
