"""The options of today's ViT families (docs/model.md), read from a checkpoint's tensors.

Each option is a tensor's presence (LayerScale, the distillation token, ln_pre, fc_norm, the patch and head
biases, Hugging Face DINOv2's mask token) or a shape (the register tokens). Whether the position embedding
has class slots (timm's no_embed_class) is what the checkpoint states, else what makes its length a square
grid of patches.
"""

from __future__ import annotations

import math
from typing import Any

from parity.formats.base import FLAX, TensorSource

# option -> (tensor in Flax naming, in timm naming); present means on.
_PRESENCE = {
    "layer_scale": ("Transformer/encoderblock_0/LayerScale_0/scale", "blocks.0.ls1.gamma"),
    "distilled": ("dist", "dist_token"),
    "pre_norm": ("Transformer/pre_norm/scale", "norm_pre.weight"),
    "patch_bias": ("embedding/bias", "patch_embed.proj.bias"),
    "fc_norm": ("fc_norm/scale", "fc_norm.weight"),
    "mask_token": ("mask_token", "mask_token"),
}
# What the tensors fix, beyond the plain ViT's fields (parity/infer.py ARCHITECTURE).
FAMILY_OPTIONS = (*_PRESENCE, "head_bias", "num_register_tokens", "posemb_class_slot")
_HEAD = ("head/kernel", "head.weight")
_HEAD_BIAS = ("head/bias", "head.bias")
_REGISTERS = ("registers", "reg_token")


def infer_options(source: TensorSource, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    """Set the family options the tensors show in `fields` (and the tensor that shows each in `evidence`)."""
    side = 0 if source.naming == FLAX else 1
    shapes = source.shapes
    for field, keys in _PRESENCE.items():
        fields[field] = keys[side] in shapes
        evidence[field] = f"{source.file_name(keys[side])} ({'present' if fields[field] else 'absent'})"
    if _HEAD[side] in shapes:
        fields["head_bias"] = _HEAD_BIAS[side] in shapes
        found = "present" if fields["head_bias"] else "absent"
        evidence["head_bias"] = f"{source.file_name(_HEAD_BIAS[side])} ({found})"
    registers = shapes.get(_REGISTERS[side])
    fields["num_register_tokens"] = int(registers[1]) if registers is not None and len(registers) == 3 else 0
    evidence["num_register_tokens"] = f"{source.file_name(_REGISTERS[side])} {tuple(registers or ())}"


def infer_class_slots(fields: dict[str, Any], evidence: dict[str, str], has_cls: bool, tokens: int | None,
                      stated: dict[str, Any]) -> int:
    """Whether the position embedding has slots for the class (and distillation) tokens; returns their count.

    What the checkpoint or the user states decides; else the classic layout (slots), unless only the
    length without slots is a square grid and no image size is stated.
    """
    prefix = (1 + fields["distilled"]) if has_cls else 0
    claim = stated.get("posemb_class_slot")
    if prefix == 0 or tokens is None:
        slot, why = True if claim is None else bool(claim), "no class token or no learned position embedding"
    elif claim is not None:
        slot, why = bool(claim), "the config"
    elif "image_size" in stated:
        slot, why = True, "the classic layout (an image size is stated)"
    else:
        slot = not (_square(tokens) and not _square(tokens - prefix))
        why = f"{tokens} positions: {'patches only' if not slot else f'{prefix} class slot(s) and the patches'}"
    fields["posemb_class_slot"], evidence["posemb_class_slot"] = slot, why
    return prefix if slot else 0


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n
