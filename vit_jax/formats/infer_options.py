"""The families' options (vit_jax/options.py), read from a checkpoint's tensors.

Most options are a tensor's presence (declared beside each option: LayerScale, the distillation token, ln_pre,
fc_norm, the patch bias, transformers' mask token, the MLP's sub-LN). The rest are read here: the head
bias (beside a head), the register tokens (a shape), the MAP head (its probe), the SwiGLU forms (the gate
layer's presence, or fc1 twice as wide as fc2 reads), q/v biases without a key bias (`q_bias` in timm, a
query bias without a key bias in Flax). Whether the position embedding has class slots (timm's
no_embed_class) is what the checkpoint states, else what makes its length a square grid of patches. The
rotary embedding has no tensor: the checkpoint's config states it.
"""

from __future__ import annotations

import math
from typing import Any

from vit_jax.formats.base import FLAX, TensorSource
from vit_jax.options import presence_options

_HEAD = ("head/kernel", "head.weight")
_HEAD_BIAS = ("head/bias", "head.bias")
_REGISTERS = ("registers", "reg_token")
_PROBE = ("MAPHead_0/probe", "attn_pool.latent")
_GATE = ("Transformer/encoderblock_0/MlpBlock_0/gate/kernel", "blocks.0.mlp.fc1_g.weight")
_FC1 = ("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", "blocks.0.mlp.fc1.weight")
_FC2 = ("Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel", "blocks.0.mlp.fc2.weight")
_ATTN = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"


def infer_options(source: TensorSource, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    """Set the options the tensors show in `fields` (and the tensor that shows each in `evidence`), and
    `map_head` (a MAP probe; the classifier is settled with the stated fields)."""
    side = 0 if source.naming == FLAX else 1
    shapes = source.shapes

    def shown(keys: tuple[str, str]) -> str:
        return f"{source.file_name(keys[side])} ({'present' if keys[side] in shapes else 'absent'})"

    for field, keys in presence_options().items():
        fields[field], evidence[field] = keys[side] in shapes, shown(keys)
    if _HEAD[side] in shapes:
        fields["head_bias"], evidence["head_bias"] = _HEAD_BIAS[side] in shapes, shown(_HEAD_BIAS)
    registers = shapes.get(_REGISTERS[side])
    fields["num_register_tokens"] = int(registers[1]) if registers is not None and len(registers) == 3 else 0
    evidence["num_register_tokens"] = f"{source.file_name(_REGISTERS[side])} {tuple(registers or ())}"
    fields["map_head"], evidence["map_head"] = _PROBE[side] in shapes, shown(_PROBE)
    _infer_mlp_type(source, side, fields, evidence)
    _infer_key_bias(source, side, fields, evidence)


def _infer_mlp_type(source: TensorSource, side: int, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    shapes = source.shapes
    if _GATE[side] in shapes:
        fields["mlp_type"], evidence["mlp_type"] = "swiglu", f"{source.file_name(_GATE[side])} (present)"
        return
    fc1, fc2 = shapes.get(_FC1[side]), shapes.get(_FC2[side])
    packed = fc1 is not None and fc2 is not None and (fc1[1] if side == 0 else fc1[0]) == 2 * (
        fc2[0] if side == 0 else fc2[1])
    fields["mlp_type"] = "swiglu_packed" if packed else "gelu"
    evidence["mlp_type"] = f"{source.file_name(_FC1[side])} {tuple(fc1 or ())} against the width fc2 reads"


def _infer_key_bias(source: TensorSource, side: int, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    """key_bias, and qkv_bias on for timm's q/v biases (Eva's q_bias and v_bias, no fused qkv bias)."""
    shapes = source.shapes
    if side == 1:
        q_bias = "blocks.0.attn.q_bias" in shapes
        fields["key_bias"] = not q_bias
        fields["qkv_bias"] = fields["qkv_bias"] or q_bias
        found = "present" if q_bias else "absent"
        evidence["key_bias"] = evidence["qkv_bias"] = f"{source.file_name('blocks.0.attn.q_bias')} ({found})"
    else:
        key = _ATTN + "key/bias" in shapes
        fields["key_bias"] = key or _ATTN + "query/bias" not in shapes
        evidence["key_bias"] = source.file_name(_ATTN + "key/bias") + (" (present)" if key else " (absent)")


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
