"""timm's ViT architectures: what each architecture name and its `model_args` fix that the tensors do not show.

A timm hub directory names its architecture (`config.json` "architecture") and the arguments it was built
with ("model_args"); the tensors show widths, depth, tokens, LayerScale, the norms and the heads. The rest
(GELU form, LayerNorm epsilon, whether the position embedding has class slots, the pooling, the rotary
reference grid) comes from the families' rows (vit_jax/families) and the arguments: timm itself is never
imported to convert. What an architecture or its arguments imply about tensors (ln_pre, fc_norm) is stated
here too, and checked against the tensors when the checkpoint is read.

Most rows are timm's VisionTransformer; rows that state `rope` are those whose MLP, pooling or attention
biases need one of the block options (a MAP head, a SwiGLU, or timm's `Eva` class, whose model_args
differ from VisionTransformer's).
"""

from __future__ import annotations

import re
from typing import Any

from vit_jax.families import TIMM_NUMERICS, TimmArchitecture, eva02, timm_architectures, timm_preset_model_args
from vit_jax.families import timm_presets as _timm_presets

# Google's plain ViT as timm builds it: the last row, and the writers' first choice for a plain config.
_PLAIN = TimmArchitecture(r"vit_(tiny|small|base|large|huge)_patch\d+_(224|384)", "vit_base_patch16_224",
                          dict(TIMM_NUMERICS, distilled=False))
ARCHITECTURES: list[TimmArchitecture] = [*timm_architectures(), _PLAIN]
# The project's presets and timm's architecture of each (its golden parameter count is timm's model).
PRESET_ARCHITECTURES = _timm_presets()
PRESET_MODEL_ARGS = timm_preset_model_args()

_ACTIVATIONS = {"gelu": "exact", "gelu_tanh": "tanh", "quick_gelu": "quick"}
# model_args that do not change the inference function (regularisation, initialisation).
_TRAINING_ONLY = {"drop_rate", "pos_drop_rate", "patch_drop_rate", "proj_drop_rate", "attn_drop_rate",
                  "drop_path_rate", "weight_init", "fix_init"}
_VIT_ARGS = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
             "embed_dim": "hidden_size", "depth": "num_layers", "num_heads": "num_heads",
             "num_classes": "num_classes", "qkv_bias": "qkv_bias", "reg_tokens": "num_register_tokens",
             "pre_norm": "pre_norm", "fc_norm": "fc_norm"}
# timm's VisionTransformer puts fc_norm after these poolings unless model_args say fc_norm (use_fc_norm)
_FC_NORM_POOLS = ("avg", "avgmax", "max")


class UnknownArchitecture(ValueError):
    """An architecture or argument this table does not cover (formats turn it into a ConversionError)."""


def is_eva(name: str) -> bool:
    return eva02.is_timm_eva(name)


def own_names(name: str, args: dict[str, Any]) -> list | None:
    """The rename table (VisionTransformer's name, the architecture's own) of an architecture whose class names
    its tensors its own way (timm's Eva), built with `args`; None for VisionTransformer's names."""
    return eva02.timm_eva_names(eva02.timm_eva_fused(name, args)) if is_eva(name) else None


def _row(name: str) -> TimmArchitecture | None:
    return next((row for row in ARCHITECTURES if re.fullmatch(row.pattern, name)), None)


def _block_options(row: TimmArchitecture) -> bool:
    return "rope" in row.fields


def architecture_fields(name: str) -> dict[str, Any]:
    """The ViTConfig fields timm's architecture `name` fixes; UnknownArchitecture if no row covers it."""
    row = _row(name)
    if row is not None:
        return dict(row.fields)
    known = ", ".join(row.example for row in ARCHITECTURES)
    raise UnknownArchitecture(f"unknown timm architecture {name!r}; this project converts the families' "
                              f"architectures (vit_jax/families) and plain vit_* (e.g. {known})")


def model_args_fields(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by timm `model_args` of architecture `name` (VisionTransformer's or Eva's)."""
    args = dict(args)
    fields: dict[str, Any] = {}
    if "ref_feat_shape" in args and args["ref_feat_shape"] is not None:
        grid = args.pop("ref_feat_shape")
        fields["rope_ref_grid"] = tuple(grid) if isinstance(grid, (list, tuple)) else (grid, grid)
    if is_eva(name):
        return {**_eva_args_fields(args), **fields}
    if args.get("global_pool") == "map":
        args.pop("global_pool")
        fields["classifier"] = "map"
    row = _row(name)
    for key in row.class_args if row else ():
        args.pop(key, None)  # layer classes the architecture fixes
    return {**_vit_args_fields(args), **fields}


def _vit_args_fields(args: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by VisionTransformer's `model_args` (widths and depth are checked against the
    tensors later)."""
    fields = {ours: args[theirs] for theirs, ours in _VIT_ARGS.items() if args.get(theirs) is not None}
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
        if args.get("fc_norm") is None:
            fields["fc_norm"] = pool in _FC_NORM_POOLS
    unknown = sorted(set(args) - set(_VIT_ARGS) - _TRAINING_ONLY - {"no_embed_class", "init_values", "act_layer",
                                                                     "global_pool", "class_token", "mlp_ratio"})
    if unknown:
        raise UnknownArchitecture(f"model_args {unknown} are not supported (they change the model in ways this "
                                  f"project does not compute)")
    return fields


def _eva_args_fields(args: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(eva02.TIMM_MODEL_ARGS) - eva02.TIMM_LAYOUT_ARGS - _TRAINING_ONLY)
    if unknown:
        raise UnknownArchitecture(f"Eva model_args {unknown} are not supported (they change the model in ways this "
                                  f"project does not compute)")
    fields = {ours: args[theirs] for theirs, ours in eva02.TIMM_MODEL_ARGS.items() if args.get(theirs) is not None}
    if "global_pool" in args:
        fields["classifier"] = {"avg": "token_gap", "token": "token"}.get(args["global_pool"], "unknown")
    if args.get("use_fc_norm") is not None:
        fields["fc_norm"] = bool(args["use_fc_norm"])
    elif "global_pool" in args:  # Eva puts fc_norm after the mean pooling unless use_fc_norm says otherwise
        fields["fc_norm"] = args["global_pool"] == "avg"
    return fields


def writer_architecture(config) -> str:
    """The timm architecture a writer names for `config`: its own (a timm source) or its preset's if a row fits,
    a fitting row's example, else (a plain config) the plain ViT's."""
    names = [n for n in (config.name, PRESET_ARCHITECTURES.get(config.name)) if n and _row(n)]
    for name in names:
        if _block_options(_row(name)) and _fits(config, name):
            return name
    for row in ARCHITECTURES:
        if _block_options(row) and _fits(config, row.example):
            return row.example
    if config.rope or config.mlp_type != "gelu" or config.classifier == "map" or not config.key_bias:
        raise UnknownArchitecture("no timm architecture computes this combination of a MAP head, a SwiGLU MLP, a "
                                  "rotary embedding and q/v-only biases")
    for name in names:
        if not _block_options(_row(name)) and _agrees(config, _row(name).fields):
            return name
    for row in (_PLAIN, *ARCHITECTURES):
        if not _block_options(row) and _agrees(config, row.fields):
            return row.example
    raise UnknownArchitecture(f"no timm architecture computes LayerNorm eps {config.layer_norm_eps:g}"
                              f"{' with a distillation token' if config.distilled else ''}")


def _agrees(config, fields: dict[str, Any]) -> bool:
    return all(getattr(config, k) == v for k, v in fields.items() if k in ("layer_norm_eps", "distilled"))


def _fits(config, name: str) -> bool:
    fields = _row(name).fields
    if is_eva(name):
        return config.rope and config.mlp_type != "gelu" and not config.key_bias and (
            (config.mlp_type == "swiglu") == config.mlp_norm)  # Eva: scale_mlp picks the separate SwiGLU
    if config.rope or not config.key_bias:
        return False
    keys = ("classifier", "mlp_type", "layer_norm_eps", "gelu")
    return all(getattr(config, k) == fields[k] for k in keys if k in fields) and (
        config.classifier != "map" or fields.get("classifier") == "map")


def _mlp_ratio(config, width: int) -> float:
    """A ratio whose int(hidden * ratio) is `width` exactly (timm floors hidden * mlp_ratio)."""
    ratio = width / config.hidden_size
    return ratio if int(config.hidden_size * ratio) == width else (width + 0.5) / config.hidden_size


def writer_model_args(config) -> dict[str, Any]:
    """timm `model_args` that rebuild `config`'s function on top of the architecture's own defaults."""
    name = writer_architecture(config)
    if is_eva(name):
        return _eva_model_args(config)
    args = _vit_model_args(config.replace(classifier="gap") if config.classifier == "map" else config)
    if config.classifier == "map":
        args.update(global_pool="map", class_token=False)
    if config.mlp_type == "swiglu_packed":  # SwiGLUPacked's fc1 is int(hidden * mlp_ratio) = 2 x mlp_dim wide
        del args["act_layer"]
        args["mlp_ratio"] = _mlp_ratio(config, 2 * config.mlp_dim)
    return args


def _size(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _vit_model_args(config) -> dict[str, Any]:
    gelu = {v: k for k, v in _ACTIVATIONS.items()}[config.gelu]
    pools = {"token": "token", "token_gap": "avg", "gap": "avg", "token_unpooled": "", "unpooled": ""}
    return dict(img_size=_size(config.image_size), patch_size=_size(config.patch_size), in_chans=config.num_channels,
                embed_dim=config.hidden_size, depth=config.num_layers, num_heads=config.num_heads,
                mlp_ratio=config.mlp_dim / config.hidden_size, num_classes=config.num_classes,
                qkv_bias=config.qkv_bias, class_token=config.has_class_token,
                global_pool=pools[config.classifier], fc_norm=config.fc_norm, pre_norm=config.pre_norm,
                no_embed_class=not config.posemb_class_slot, reg_tokens=config.num_register_tokens,
                init_values=config.layer_scale_init if config.layer_scale else None, act_layer=gelu)


def _eva_model_args(config) -> dict[str, Any]:
    return dict(img_size=_size(config.image_size), patch_size=_size(config.patch_size), in_chans=config.num_channels,
                embed_dim=config.hidden_size, depth=config.num_layers, num_heads=config.num_heads,
                mlp_ratio=_mlp_ratio(config, config.mlp_dim), num_classes=config.num_classes,
                qkv_bias=config.qkv_bias, swiglu_mlp=True, scale_mlp=config.mlp_type == "swiglu",
                use_rot_pos_emb=True, ref_feat_shape=list(config.rope_ref_grid or config.grid_size),
                class_token=config.has_class_token, global_pool="avg" if config.classifier == "token_gap" else "token",
                use_fc_norm=config.fc_norm, init_values=config.layer_scale_init if config.layer_scale else None)
