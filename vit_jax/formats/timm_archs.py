"""timm's ViT architectures: what each architecture name fixes that the tensors do not show.

A timm hub directory names its architecture (`config.json` "architecture") and the arguments it was built
with ("model_args"); the tensors show widths, depth, tokens, LayerScale, the norms and the heads. The rest
(GELU form, LayerNorm epsilon, whether the position embedding has class slots, the pooling) comes from
this table and the arguments: timm itself is never imported to convert.

A later family adds a row (and, for a new option, an argument in MODEL_ARGS); the first matching row wins.
"""

from __future__ import annotations

import re
from typing import Any

_IMAGENET = dict(pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))
# timm resizes position grids with resample_abs_pos_embed: torch bicubic, antialias=True.
_TIMM = dict(gelu="exact", layer_norm_eps=1e-6, posemb_resize="torch_bicubic_antialias")
_CLIP = dict(layer_norm_eps=1e-5, posemb_resize="torch_bicubic_antialias",
             pixel_mean=(0.48145466, 0.4578275, 0.40821073),
             pixel_std=(0.26862954, 0.26130258, 0.27577711))
_SIZES = "(tiny|small|base|large|huge)"

# (architecture name pattern, an architecture of the row that a writer may name, ViTConfig fields it fixes).
# `distilled` picks timm's VisionTransformerDistilled class; every other row builds VisionTransformer.
ARCHITECTURES = [
    (rf"vit_{_SIZES}_patch\d+_clip_quickgelu_\d+", "vit_base_patch16_clip_quickgelu_224",
     dict(_CLIP, gelu="quick", distilled=False)),
    (rf"vit_{_SIZES}_patch\d+_clip_\d+", "vit_base_patch16_clip_224", dict(_CLIP, gelu="exact", distilled=False)),
    (r"vit_(small|base|large)_patch14_reg\d+_dinov2", "vit_small_patch14_reg4_dinov2",
     dict(_TIMM, **_IMAGENET, posemb_class_slot=False, distilled=False, layer_scale_init=1e-5)),
    (r"vit_(small|base|large)_patch14_dinov2", "vit_small_patch14_dinov2",
     dict(_TIMM, **_IMAGENET, distilled=False, layer_scale_init=1e-5)),
    (r"deit3_(small|medium|base|large|huge)_patch(14|16)_(224|384)", "deit3_small_patch16_224",
     dict(_TIMM, **_IMAGENET, posemb_class_slot=False, distilled=False, layer_scale_init=1e-6)),
    (r"deit_(tiny|small|base)_distilled_patch16_(224|384)", "deit_base_distilled_patch16_224",
     dict(_TIMM, **_IMAGENET, distilled=True)),
    (r"deit_(tiny|small|base)_patch16_(224|384)", "deit_base_patch16_224", dict(_TIMM, **_IMAGENET, distilled=False)),
    (rf"vit_{_SIZES}_patch\d+_(224|384)", "vit_base_patch16_224", dict(_TIMM, distilled=False)),
]

# The project's presets and timm's architecture of each (its golden parameter count is timm's model).
PRESET_ARCHITECTURES = {
    **{f"DeiT-{v}_16": f"deit_{n}_patch16_224" for v, n in (("Ti", "tiny"), ("S", "small"), ("B", "base"))},
    **{f"DeiT-{v}_16_distilled": f"deit_{n}_distilled_patch16_224"
       for v, n in (("Ti", "tiny"), ("S", "small"), ("B", "base"))},
    **{f"DeiT3-{v}_16": f"deit3_{n}_patch16_224" for v, n in (("S", "small"), ("B", "base"), ("L", "large"))},
    **{f"DINOv2-{v}_14": f"vit_{n}_patch14_dinov2" for v, n in (("S", "small"), ("B", "base"), ("L", "large"))},
    **{f"DINOv2-{v}_14_reg4": f"vit_{n}_patch14_reg4_dinov2" for v, n in (("S", "small"), ("B", "base"),
                                                                          ("L", "large"))},
    "CLIP-B_16": "vit_base_patch16_clip_quickgelu_224",
    "CLIP-B_32": "vit_base_patch32_clip_quickgelu_224",
    "CLIP-L_14": "vit_large_patch14_clip_quickgelu_224",
    # MAE fine-tunes: timm's plain ViT with MAE's pooling (model_args global_pool='avg', fc_norm=True)
    "MAE-B_16": "vit_base_patch16_224",
    "MAE-L_16": "vit_large_patch16_224",
    "MAE-H_14": "vit_huge_patch14_224",
}
PRESET_MODEL_ARGS = {name: dict(global_pool="avg", fc_norm=True, num_classes=1000)
                     for name in ("MAE-B_16", "MAE-L_16", "MAE-H_14")}

_ACTIVATIONS = {"gelu": "exact", "gelu_tanh": "tanh", "quick_gelu": "quick"}
# model_args that do not change the inference function (regularisation, initialisation).
_TRAINING_ONLY = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
                  "drop_path_rate", "weight_init", "fix_init"}


class UnknownArchitecture(ValueError):
    """An architecture or argument this table does not cover (formats turn it into a ConversionError)."""


def architecture_fields(name: str) -> dict[str, Any]:
    """The ViTConfig fields timm's architecture `name` fixes; UnknownArchitecture if no row covers it."""
    for pattern, _, fields in ARCHITECTURES:
        if re.fullmatch(pattern, name):
            return dict(fields)
    known = ", ".join(example for _, example, _ in ARCHITECTURES)
    raise UnknownArchitecture(f"unknown timm architecture {name!r}; this project converts the ViTs of "
                              f"deit_*, deit3_*, vit_*_dinov2 (+reg), vit_*_clip_* and plain vit_* (e.g. {known})")


def model_args_fields(args: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by timm `model_args` (widths and depth are checked against the tensors later)."""
    renames = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
               "embed_dim": "hidden_size", "depth": "num_layers", "num_heads": "num_heads",
               "num_classes": "num_classes", "qkv_bias": "qkv_bias", "reg_tokens": "num_register_tokens",
               "pre_norm": "pre_norm", "fc_norm": "fc_norm"}
    fields = {ours: args[theirs] for theirs, ours in renames.items() if args.get(theirs) is not None}
    if "no_embed_class" in args:
        fields["posemb_class_slot"] = not args["no_embed_class"]
    if "init_values" in args:
        fields["layer_scale"] = args["init_values"] is not None
        if args["init_values"] is not None:
            fields["layer_scale_init"] = float(args["init_values"])
    if "act_layer" in args:
        if args["act_layer"] not in _ACTIVATIONS:
            raise UnknownArchitecture(f"model_args act_layer {args['act_layer']!r} is not one of "
                                      f"{sorted(_ACTIVATIONS)}")
        fields["gelu"] = _ACTIVATIONS[args["act_layer"]]
    pool, has_cls = args.get("global_pool"), args.get("class_token", True)
    if pool is not None:
        pools = {"token": "token", "avg": "token_gap" if has_cls else "gap",
                 "": "token_unpooled" if has_cls else "unpooled"}
        if pool not in pools:
            raise UnknownArchitecture(f"model_args global_pool {pool!r} is not one of {sorted(pools)}")
        fields["classifier"] = pools[pool]
    unknown = sorted(set(args) - set(renames) - _TRAINING_ONLY - {"no_embed_class", "init_values", "act_layer",
                                                                   "global_pool", "class_token", "mlp_ratio"})
    if unknown:
        raise UnknownArchitecture(f"model_args {unknown} are not supported (they change the model in ways this "
                                  f"project does not compute)")
    return fields


def writer_architecture(config) -> str:
    """The timm architecture a writer names for `config`: its own (a timm source), its preset's, else a row's."""
    for name in (config.name, PRESET_ARCHITECTURES.get(config.name)):
        if name and any(re.fullmatch(p, name) for p, _, _ in ARCHITECTURES):
            if _agrees(config, architecture_fields(name)):
                return name
    for _, example, fields in ARCHITECTURES:
        # timm.create_model drops None arguments: init_values=None cannot turn off an architecture's LayerScale
        if _agrees(config, {k: fields[k] for k in ("layer_norm_eps", "distilled")}) and (
                config.layer_scale or "layer_scale_init" not in fields):
            return example
    raise UnknownArchitecture(f"no timm architecture computes LayerNorm eps {config.layer_norm_eps:g}"
                              f"{' with a distillation token' if config.distilled else ''}")


def _agrees(config, fields: dict[str, Any]) -> bool:
    return all(getattr(config, k) == v for k, v in fields.items() if k in ("layer_norm_eps", "distilled"))


def writer_model_args(config) -> dict[str, Any]:
    """timm `model_args` that rebuild `config`'s function on top of the architecture's own defaults."""
    gelu = {v: k for k, v in _ACTIVATIONS.items()}[config.gelu]
    pools = {"token": "token", "token_gap": "avg", "gap": "avg", "token_unpooled": "", "unpooled": ""}
    size = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
    return dict(img_size=size(config.image_size), patch_size=size(config.patch_size), in_chans=config.num_channels,
                embed_dim=config.hidden_size, depth=config.num_layers, num_heads=config.num_heads,
                mlp_ratio=config.mlp_dim / config.hidden_size, num_classes=config.num_classes,
                qkv_bias=config.qkv_bias, class_token=config.has_class_token,
                global_pool=pools[config.classifier], fc_norm=config.fc_norm, pre_norm=config.pre_norm,
                no_embed_class=not config.posemb_class_slot, reg_tokens=config.num_register_tokens,
                init_values=config.layer_scale_init if config.layer_scale else None, act_layer=gelu)
