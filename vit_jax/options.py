"""The architectural options of the families (vit_jax/families), each declared once.

One declaration gives an option's ViTConfig field and default (the classic ViT's value), how its presence
shows in a checkpoint's tensors, which formats can hold a value other than the default, and a one-line
description (and how a conversion's summary line shows it). The config takes its defaults from here,
architecture inference reads the presence tensors, and the writers of the classic layouts name the options
they cannot hold from `formats`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Formats that hold every option (their own checks name the combinations a source library lacks).
_ALL = ("flax", "google-npz", "torch", "timm-hub", "hf")


@dataclasses.dataclass(frozen=True)
class Option:
    field: str
    default: Any  # the classic ViT's value
    description: str
    # the tensor whose presence turns the option on, in Flax naming and in timm's (None: shown otherwise)
    tensors: tuple[str, str] | None = None
    formats: tuple[str, ...] = _ALL  # formats that can hold a value other than the default
    in_tensors: bool = True  # the tensors fix it (a config that disagrees contradicts the checkpoint)
    summary: str = ""  # a value away from the default in a conversion's summary line ({value}); "": not shown


_BLOCK0 = "Transformer/encoderblock_0/"
OPTIONS: dict[str, Option] = {o.field: o for o in (
    Option("layer_scale", False, "a learned per-channel scale on each residual branch (timm's LayerScale)",
           (_BLOCK0 + "LayerScale_0/scale", "blocks.0.ls1.gamma"), summary="LayerScale"),
    Option("distilled", False, "a distillation token after the class token, with its own head",
           ("dist", "dist_token"), summary="distillation token"),
    Option("num_register_tokens", 0, "tokens after the class token, without position embedding, dropped before "
           "the head", summary="{value} registers"),
    Option("posemb_class_slot", True, "the position embedding covers the class token too (False: timm's "
           "no_embed_class)", formats=(*_ALL, "big-vision"), summary="no class slot in posemb"),
    Option("pre_norm", False, "a LayerNorm after the position embedding, before the blocks (ln_pre)",
           ("Transformer/pre_norm/scale", "norm_pre.weight"), summary="pre-norm"),
    Option("patch_bias", True, "the patch embedding's bias", ("embedding/bias", "patch_embed.proj.bias")),
    Option("head_bias", True, "the head's bias"),
    Option("fc_norm", False, "the final norm after pooling instead of before it (timm's fc_norm)",
           ("fc_norm/scale", "fc_norm.weight"), summary="fc_norm"),
    Option("mask_token", False, "a transformers mask token (for masked pre-training): held so it survives a "
           "round trip, never computed with", ("mask_token", "mask_token"), summary="mask token"),
    Option("mlp_type", "gelu", "the MLP: GELU, or SwiGLU packed in one fc1 or with separate gate and value "
           "layers", summary="MLP {value}"),
    Option("mlp_norm", False, "a LayerNorm over the gated units before fc2 (a sub-LN)",
           (_BLOCK0 + "MlpBlock_0/norm/scale", "blocks.0.mlp.norm.weight"), summary="sub-LN"),
    Option("rope", False, "a 2D rotary position embedding on the patch tokens' q and k (no tensor: the config "
           "states it)", in_tensors=False, summary="rotary embedding"),
    Option("key_bias", True, "with qkv_bias: False gives q and v biases only", summary="no key bias"),
)}


def option_default(field: str) -> Any:
    return OPTIONS[field].default


def tensor_options() -> tuple[str, ...]:
    """The options a checkpoint's tensors fix."""
    return tuple(name for name, option in OPTIONS.items() if option.in_tensors)


def presence_options() -> dict[str, tuple[str, str]]:
    """option -> (Flax tensor, timm tensor) for the options a tensor's presence shows."""
    return {name: option.tensors for name, option in OPTIONS.items() if option.tensors is not None}


def summary(config) -> str:
    """The options of `config` away from their defaults, for a conversion's summary line (", LayerScale, ...")."""
    return "".join(f", {option.summary.format(value=getattr(config, name))}" for name, option in OPTIONS.items()
                   if option.summary and getattr(config, name) != option.default)


def unheld_options(config, format_name: str) -> list[str]:
    """The options of `config` away from their defaults that `format_name` cannot hold (a head's bias counts
    only where there is a head)."""
    return [name for name, option in OPTIONS.items()
            if format_name not in option.formats and getattr(config, name) != option.default
            and (name != "head_bias" or config.num_classes)]
