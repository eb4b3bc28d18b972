"""timm's SigLIP, DINOv2-giant and EVA-02 architectures: the rows vit_jax/formats/timm_archs.py's table lacks.

SigLIP and DINOv2-giant are timm's VisionTransformer (`global_pool='map'`; `mlp_layer=SwiGLUPacked`, which
the architecture fixes: config.json cannot name a class); EVA-02 is timm's `Eva` (rotary embedding on, q/v
biases, SwiGLU; its model_args differ from VisionTransformer's). The functions here answer for these rows
and hand every other architecture to timm_archs.
"""

from __future__ import annotations

import re
from typing import Any

from vit_jax.formats import timm_archs
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.timm_archs import UnknownArchitecture

_HALF = dict(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
_RESIZE = dict(posemb_resize="torch_bicubic_antialias")  # timm's resample_abs_pos_embed, as timm_archs' rows
_CLIP_PIXELS = dict(pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711))
_SIGLIP = dict(layer_norm_eps=1e-6, classifier="map", mlp_type="gelu", rope=False, distilled=False, **_HALF, **_RESIZE)
# (pattern, an architecture a writer may name, ViTConfig fields it fixes); timm builds some SigLIPs with gelu_tanh.
ARCHITECTURES = [
    (r"vit_base_patch32_siglip_256|vit_large_patch16_siglip_512|vit_so400m_patch16_siglip_\d+",
     "vit_base_patch32_siglip_256", dict(_SIGLIP, gelu="tanh")),
    (r"vit_(base|large|so400m)_patch\d+_siglip_\d+", "vit_base_patch16_siglip_224", dict(_SIGLIP, gelu="exact")),
    (r"vit_giant_patch14_(reg\d+_)?dinov2", "vit_giant_patch14_dinov2",
     dict(layer_norm_eps=1e-6, mlp_type="swiglu_packed", rope=False, distilled=False, layer_scale_init=1e-5,
          **_RESIZE,
          pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225))),
    (r"eva02_(tiny|small|base|large)_patch14_(224|336|448)", "eva02_tiny_patch14_224",
     dict(layer_norm_eps=1e-6, rope=True, distilled=False, classifier="token_gap", **_CLIP_PIXELS, **_RESIZE)),
]
PRESET_ARCHITECTURES = {
    "SigLIP-B_16": "vit_base_patch16_siglip_224", "SigLIP-B_16_256": "vit_base_patch16_siglip_256",
    "SigLIP-B_16_384": "vit_base_patch16_siglip_384", "SigLIP-So400m_14": "vit_so400m_patch14_siglip_224",
    "SigLIP-So400m_14_384": "vit_so400m_patch14_siglip_384", "DINOv2-g_14": "vit_giant_patch14_dinov2",
    **{f"EVA02-{v}_14": f"eva02_{n}_patch14_224" for v, n in (("Ti", "tiny"), ("S", "small"), ("B", "base"),
                                                               ("L", "large"))},
}
# Eva's model_args (and VisionTransformer's that Eva shares) -> ViTConfig fields; the tensors fix the rest.
_EVA_ARGS = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
             "embed_dim": "hidden_size", "depth": "num_layers", "num_heads": "num_heads", "num_classes": "num_classes",
             "qkv_bias": "qkv_bias", "use_rot_pos_emb": "rope"}
_EVA_LAYOUT = {"qkv_fused", "swiglu_mlp", "scale_mlp", "mlp_ratio", "use_abs_pos_emb", "class_token", "use_fc_norm",
               "global_pool", "init_values", "ref_feat_shape"}


def _row(name: str):
    return next((row for row in ARCHITECTURES if re.fullmatch(row[0], name)), None)


def is_eva(name: str) -> bool:
    return name.startswith("eva02_")


def architecture_fields(name: str) -> dict[str, Any]:
    row = _row(name)
    if row is not None:
        return dict(row[2])
    try:
        return timm_archs.architecture_fields(name)
    except UnknownArchitecture as e:
        raise UnknownArchitecture(f"{e}; or vit_*_siglip_*, vit_giant_patch14_dinov2, eva02_*_patch14_*") from None


def model_args_fields(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """ViTConfig fields stated by timm `model_args` of architecture `name` (VisionTransformer's or Eva's)."""
    args = dict(args)
    fields: dict[str, Any] = {}
    if "ref_feat_shape" in args and args["ref_feat_shape"] is not None:
        grid = args.pop("ref_feat_shape")
        fields["rope_ref_grid"] = tuple(grid) if isinstance(grid, (list, tuple)) else (grid, grid)
    if not is_eva(name):
        if args.get("global_pool") == "map":
            args.pop("global_pool")
            fields["classifier"] = "map"
        for key in ("mlp_layer", "act_layer") if _row(name) and "dinov2" in name else ():
            args.pop(key, None)  # the architecture's SwiGLUPacked and SiLU
        return {**timm_archs.model_args_fields(args), **fields}
    unknown = sorted(set(args) - set(_EVA_ARGS) - _EVA_LAYOUT - timm_archs._TRAINING_ONLY)
    if unknown:
        raise UnknownArchitecture(f"Eva model_args {unknown} are not supported (they change the model in ways this "
                                  f"project does not compute)")
    fields.update({ours: args[theirs] for theirs, ours in _EVA_ARGS.items() if args.get(theirs) is not None})
    if "global_pool" in args:
        fields["classifier"] = {"avg": "token_gap", "token": "token"}.get(args["global_pool"], "unknown")
    return fields


def writer_architecture(config) -> str:
    """The timm architecture for `config`: its own or its preset's if a row here fits, a row's example, else
    timm_archs'."""
    for name in (config.name, PRESET_ARCHITECTURES.get(config.name)):
        if name and _row(name) and _fits(config, name):
            return name
    for _, example, _ in ARCHITECTURES:
        if _fits(config, example):
            return example
    if config.rope or config.mlp_type != "gelu" or config.classifier == "map" or not config.key_bias:
        raise UnknownArchitecture("no timm architecture computes this combination of the SigLIP, DINOv2-giant and "
                                  "EVA-02 options")
    return timm_archs.writer_architecture(config)


def _fits(config, name: str) -> bool:
    fields = _row(name)[2]
    if is_eva(name):
        return config.rope and config.mlp_type != "gelu" and not config.key_bias and (
            (config.mlp_type == "swiglu") == config.mlp_norm)  # Eva: scale_mlp picks the separate SwiGLU
    if config.rope or not config.key_bias:
        return False
    keys = ("classifier", "mlp_type", "layer_norm_eps", "gelu")
    return all(getattr(config, k) == fields[k] for k in keys if k in fields) and (
        config.classifier != "map" or "siglip" in name)


def _mlp_ratio(config, width: int) -> float:
    """A ratio whose int(hidden * ratio) is `width` exactly (timm floors hidden * mlp_ratio)."""
    ratio = width / config.hidden_size
    return ratio if int(config.hidden_size * ratio) == width else (width + 0.5) / config.hidden_size


def writer_model_args(config) -> dict[str, Any]:
    name = writer_architecture(config)
    if not _row(name):
        return timm_archs.writer_model_args(config)
    if not is_eva(name):
        args = timm_archs.writer_model_args(config.replace(classifier="gap") if config.classifier == "map"
                                            else config)
        if config.classifier == "map":
            args.update(global_pool="map", class_token=False)
        if config.mlp_type == "swiglu_packed":  # SwiGLUPacked's fc1 is int(hidden * mlp_ratio) = 2 x mlp_dim wide
            del args["act_layer"]
            args["mlp_ratio"] = _mlp_ratio(config, 2 * config.mlp_dim)
        return args
    size = lambda v: list(v) if isinstance(v, (tuple, list)) else v  # noqa: E731
    return dict(img_size=size(config.image_size), patch_size=size(config.patch_size), in_chans=config.num_channels,
                embed_dim=config.hidden_size, depth=config.num_layers, num_heads=config.num_heads,
                mlp_ratio=_mlp_ratio(config, config.mlp_dim), num_classes=config.num_classes,
                qkv_bias=config.qkv_bias, swiglu_mlp=True, scale_mlp=config.mlp_type == "swiglu",
                use_rot_pos_emb=True, ref_feat_shape=list(config.rope_ref_grid or config.grid_size),
                class_token=config.has_class_token, global_pool="avg" if config.classifier == "token_gap" else "token",
                use_fc_norm=config.fc_norm, init_values=config.layer_scale_init if config.layer_scale else None)


# timm's Eva names that differ from VisionTransformer's (the mapping table's torch side): LayerScale's gamma_1/2,
# and, unless qkv_fused (the default of eva02_base/large), separate q/k/v projections with q and v biases.
_EVA_SAME = ["cls_token", "reg_token", "pos_embed", "patch_embed.proj.{p}", "norm.{p}", "fc_norm.{p}", "head.{p}"]
_EVA_BLOCK_SAME = ["norm1.{p}", "attn.proj.{p}", "norm2.{p}", "mlp.fc1.{p}", "mlp.fc1_g.{p}", "mlp.fc1_x.{p}",
                   "mlp.norm.{p}", "mlp.fc2.{p}"]


def eva_names(fused: bool) -> RenameTable:
    block = "blocks.{i}."
    entries = [(k, k) for k in _EVA_SAME] + [(block + k, block + k) for k in _EVA_BLOCK_SAME]
    entries += [(block + "ls1.gamma", block + "gamma_1"), (block + "ls2.gamma", block + "gamma_2")]
    if fused:
        entries += [(block + k, block + k) for k in ("attn.qkv.weight", "attn.q_bias", "attn.v_bias")]
    else:
        entries += [(block + "attn.qkv.weight", tuple(f"{block}attn.{n}_proj.weight" for n in "qkv")),
                    (block + "attn.q_bias", block + "attn.q_proj.bias"),
                    (block + "attn.v_bias", block + "attn.v_proj.bias")]
    return RenameTable(entries)


def eva_fused(name: str, args: dict[str, Any]) -> bool:
    """Whether Eva architecture `name` built with `args` fuses q/k/v (timm: eva02_base/large do not)."""
    return bool(args.get("qkv_fused", not re.match(r"eva02_(base|large)", name)))
