"""Model summary: per-layer output shapes and parameter counts.

`python -m vit_jax.model_summary ViT-B_16 [--image-size 384] [--num-classes 10]`
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.config import ConfigError, ViTConfig, get_config
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.model import INTERMEDIATES, VisionTransformer, named_intermediates, param_shapes


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _layer_params(config: ViTConfig) -> dict[str, int]:
    """Parameter count of each canonical layer (no-param layers omitted)."""
    params = param_shapes(config.replace(scan=False, remat=False))
    encoder = params["Transformer"]
    counts = {"patch_embed": _count(params["embedding"])}
    if config.is_hybrid:  # the ResNet stem's params sit at the top level, beside the ViT's
        vit = {"embedding", "cls", "Transformer", "pre_logits", "head"}
        counts["stem"] = _count({k: v for k, v in params.items() if k not in vit})
    counts["embed"] = _count(params.get("cls", {})) + _count(encoder.get("posembed_input", {}))
    for i in range(config.num_layers):
        block = encoder[f"encoderblock_{i}"]
        counts[f"blocks.{i}.attn"] = _count(block["LayerNorm_0"]) + _count(block["MultiHeadDotProductAttention_0"])
        counts[f"blocks.{i}.mlp"] = _count(block["LayerNorm_1"]) + _count(block["MlpBlock_0"])
    counts["norm"] = _count(encoder["encoder_norm"])
    counts["pre_logits"] = _count(params.get("pre_logits", {}))
    counts["logits"] = _count(params.get("head", {}))
    return counts


def summary_rows(config: ViTConfig) -> list[tuple[str, tuple[int, ...], int]]:
    """(canonical layer, output shape for batch 1, parameter count) rows."""
    images = jax.ShapeDtypeStruct((1, *config.image_hw, config.num_channels), jnp.float32)
    model = VisionTransformer(config)
    sown = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, mutable=True)[INTERMEDIATES], images)
    inter = named_intermediates(sown, config.num_layers)
    counts = _layer_params(config)
    return [(name, tuple(inter[name].shape), counts.get(name, 0)) for name in config.layer_names()]


def summary(config: ViTConfig) -> str:
    """A printable table of the model, with its totals."""
    rows = summary_rows(config)
    total = _count(param_shapes(config))
    width = max(len(r[0]) for r in rows) + 2
    lines = [
        f"{config.name}: {config.image_hw[0]}x{config.image_hw[1]} px, patch {config.patch_hw}, "
        f"{config.num_layers} layers, width {config.hidden_size}, {config.num_heads} heads, "
        f"classifier {config.classifier!r}, {config.num_classes} classes",
        f"{'layer':<{width}}{'output shape':<22}{'params':>14}",
        "-" * (width + 36),
    ]
    for name, shape, count in rows:
        lines.append(f"{name:<{width}}{str(shape):<22}{count:>14,}")
    lines += ["-" * (width + 36), f"{'total':<{width}}{'':<22}{total:>14,}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.model_summary", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("preset", help="preset name, e.g. ViT-B_16 or B/16")
    parser.add_argument("--image-size", type=int, help="input resolution in pixels (default: the preset's)")
    parser.add_argument("--num-classes", type=int, help="classes of the head, 0 for none (default: the preset's)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("image_size", args.image_size), ("num_classes", args.num_classes)) if v is not None}
    try:
        config = get_config(args.preset, **overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
