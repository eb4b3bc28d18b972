"""torchvision's `VisionTransformer` (`vit_b_16` and friends) naming, as renames of timm's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vit_jax.families import IMAGENET_PIXELS
from vit_jax.formats.base import ConversionError, TensorSource, family_option_problems, vit_pytorch_option_problems
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

FORMAT = "torchvision"
# torchvision uses nn.GELU() (exact), LayerNorm eps 1e-6 and ImageNet mean/std inputs.
NUMERICS = {"gelu": "exact", "layer_norm_eps": 1e-6, **IMAGENET_PIXELS}

_LAYER = "encoder.layers.encoder_layer_{i}"
# timm key <-> torchvision key. Where a timm key appears twice, the first
# torchvision name is the one written; the second is an older name still read
# (torchvision's MLPBlock was `linear_1`/`linear_2` before it became Sequential indices).
TABLE = RenameTable([
    ("cls_token", "class_token"),
    ("pos_embed", "encoder.pos_embedding"),
    ("patch_embed.proj.{p}", "conv_proj.{p}"),
    ("blocks.{i}.norm1.{p}", f"{_LAYER}.ln_1.{{p}}"),
    ("blocks.{i}.attn.qkv.weight", f"{_LAYER}.self_attention.in_proj_weight"),  # (3D, D), q;k;v like timm
    ("blocks.{i}.attn.qkv.bias", f"{_LAYER}.self_attention.in_proj_bias"),
    ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.self_attention.out_proj.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_LAYER}.ln_2.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.0.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.linear_1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.3.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.linear_2.{{p}}"),
    ("norm.{p}", "encoder.ln.{p}"),
    ("pre_logits.fc.{p}", "heads.pre_logits.{p}"),  # representation_size: Linear + Tanh, as ours
    ("head.{p}", "heads.head.{p}"),
])


def check_expressible(config) -> None:
    """torchvision's VisionTransformer has fewer options than ViTConfig; refuse what it cannot hold."""
    problems = []
    if config.classifier != "token":
        problems.append(f"classifier {config.classifier!r} (torchvision always classifies the class token)")
    if config.is_hybrid:
        problems.append(f"a ResNet stem (resnet_layers={config.resnet_layers}; torchvision's ViT has no hybrid: "
                        "use the timm or Google formats)")
    if config.posemb != "learn":
        problems.append(f"posemb {config.posemb!r} (torchvision has only learned position embeddings)")
    if not config.qkv_bias:
        problems.append("qkv_bias=False (torchvision's attention always has in_proj_bias)")
    problems += vit_pytorch_option_problems(config, "torchvision")
    problems += family_option_problems(config, "torchvision", FORMAT)
    if not config.num_classes:
        problems.append("num_classes=0 (torchvision always has heads.head)")
    for field in ("image_size", "patch_size"):
        value = getattr(config, field)
        if isinstance(value, tuple) and value[0] != value[1]:
            problems.append(f"non-square {field} {value} (torchvision takes one int)")
    if problems:
        raise ConversionError(f"torchvision's VisionTransformer cannot express this model: {'; '.join(problems)}")


def read(path: str | Path) -> TensorSource:
    return TABLE.source_as_timm(read_file(path, FORMAT, "torchvision", NUMERICS), "torchvision")


def write(path: str | Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    check_expressible(config)
    write_file(path, TABLE.rename_to_other(tensors), like)
