"""EVA-02 (Fang et al. 2023), timm's `Eva`: a 2D rotary embedding on the patch tokens' q and k, q and v
biases without a key bias, a SwiGLU MLP (packed in Ti and S; separate gate and value layers and a sub-LN in
B and L), the head reading the mean of the patch tokens after fc_norm."""

import re
from typing import Any

from vit_jax.families import clip
from vit_jax.families.family import Family, TimmArchitecture

# timm's eva02_*_patch14_{224,336,448} all scale rotary positions to the 16 x 16 grid of 224 px (224 / 14),
# whatever the model's own grid: ref_feat_shape=(16, 16) in each architecture.
TIMM_ROPE_REF_GRID = (16, 16)
_FIELDS = dict(patch_size=14, num_classes=0, classifier="token_gap", fc_norm=True, rope=True, key_bias=False,
               layer_norm_eps=1e-6, rope_ref_grid=TIMM_ROPE_REF_GRID, **clip.PIXELS)
_VARIANTS = {"Ti": ("tiny", 192, 3, 12), "S": ("small", 384, 6, 12), "B": ("base", 768, 12, 12),
             "L": ("large", 1024, 16, 24)}


def _preset(variant: str, hidden: int, heads: int, layers: int) -> dict[str, Any]:
    """int(d * 8/3) gated units; Ti and S: packed SwiGLU, B and L: separate gate and value layers and a sub-LN."""
    wide = variant in ("B", "L")
    return dict(hidden_size=hidden, num_heads=heads, num_layers=layers, mlp_dim=hidden * 8 // 3,
                mlp_type="swiglu" if wide else "swiglu_packed", mlp_norm=wide, **_FIELDS)


# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's
# eva02_{tiny,small,base,large}_patch14_224 (no head).
_GOLDEN_PARAMS = {
    "EVA02-Ti_14": 5_502_144,
    "EVA02-S_14": 21_621_120,
    "EVA02-B_14": 85_758_720,
    "EVA02-L_14": 303_268_800,
}

FAMILY = Family(
    name="EVA-02",
    summary="a 2D rotary embedding, q/v biases, a SwiGLU MLP (with a sub-LN in B and L), fc_norm over the mean",
    presets={f"EVA02-{v}_14": _preset(v, *dims) for v, (_, *dims) in _VARIANTS.items()},
    timm_architectures=(
        # Eva's default pooling is the mean, with fc_norm after it
        TimmArchitecture(r"eva02_(tiny|small|base|large)_patch14_(224|336|448)", "eva02_tiny_patch14_224",
                         dict(layer_norm_eps=1e-6, rope=True, distilled=False, classifier="token_gap", fc_norm=True,
                              rope_ref_grid=TIMM_ROPE_REF_GRID, posemb_resize="torch_bicubic_antialias",
                              **clip.PIXELS)),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={f"EVA02-{v}_14": f"eva02_{n}_patch14_224" for v, (n, *_) in _VARIANTS.items()},
    pixels=clip.PIXELS,  # EVA-02 was trained on CLIP's statistics
)

# Eva's model_args (and VisionTransformer's that Eva shares) -> ViTConfig fields; the tensors fix the rest.
TIMM_MODEL_ARGS = {"img_size": "image_size", "patch_size": "patch_size", "in_chans": "num_channels",
                   "embed_dim": "hidden_size", "depth": "num_layers", "num_heads": "num_heads",
                   "num_classes": "num_classes", "qkv_bias": "qkv_bias", "use_rot_pos_emb": "rope"}
# Eva's model_args that only say which layout the tensors have (checked against them) or are written back.
TIMM_LAYOUT_ARGS = {"qkv_fused", "swiglu_mlp", "scale_mlp", "mlp_ratio", "use_abs_pos_emb", "class_token",
                    "use_fc_norm", "global_pool", "init_values", "ref_feat_shape"}

# timm's Eva names that differ from VisionTransformer's (the mapping table's torch side): LayerScale's gamma_1/2,
# and, unless qkv_fused (the default of eva02_base/large), separate q/k/v projections with q and v biases.
_SAME = ["cls_token", "reg_token", "pos_embed", "patch_embed.proj.{p}", "norm.{p}", "fc_norm.{p}", "head.{p}"]
_BLOCK_SAME = ["norm1.{p}", "attn.proj.{p}", "norm2.{p}", "mlp.fc1.{p}", "mlp.fc1_g.{p}", "mlp.fc1_x.{p}",
               "mlp.norm.{p}", "mlp.fc2.{p}"]


def is_timm_eva(architecture: str) -> bool:
    return architecture.startswith("eva02_")


def timm_eva_names(fused: bool) -> list[tuple[str, str | tuple[str, ...]]]:
    """(VisionTransformer's name, Eva's name(s)) of every tensor, as a rename table's entries."""
    block = "blocks.{i}."
    entries: list[tuple[str, str | tuple[str, ...]]] = [(k, k) for k in _SAME]
    entries += [(block + k, block + k) for k in _BLOCK_SAME]
    entries += [(block + "ls1.gamma", block + "gamma_1"), (block + "ls2.gamma", block + "gamma_2")]
    if fused:
        entries += [(block + k, block + k) for k in ("attn.qkv.weight", "attn.q_bias", "attn.v_bias")]
    else:
        entries += [(block + "attn.qkv.weight", tuple(f"{block}attn.{n}_proj.weight" for n in "qkv")),
                    (block + "attn.q_bias", block + "attn.q_proj.bias"),
                    (block + "attn.v_bias", block + "attn.v_proj.bias")]
    return entries


def timm_eva_fused(architecture: str, args: dict[str, Any]) -> bool:
    """Whether Eva `architecture` built with `args` fuses q/k/v (timm: eva02_base/large do not)."""
    return bool(args.get("qkv_fused", not re.match(r"eva02_(base|large)", architecture)))
