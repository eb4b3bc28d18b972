"""The options of SigLIP, DINOv2-giant and EVA-02 read from a checkpoint's tensors (docs/model.md).

The MAP head is its probe's presence; the SwiGLU forms are the gate layer's presence (separate) or fc1 twice
as wide as fc2 reads (packed); EVA-02's sub-LN is the MLP norm's presence; q/v biases without a key bias are
`q_bias` (timm) or a query bias without a key bias (Flax). The rotary embedding has no tensor: the checkpoint's
config states it (a timm architecture, the config JSON beside the weights).
"""

from __future__ import annotations

from typing import Any

from vit_jax.formats.base import FLAX, TensorSource

# What the tensors fix beyond part I's options (vit_jax/formats/infer.py ARCHITECTURE).
FAMILY_OPTIONS_2 = ("mlp_type", "mlp_norm", "key_bias")
_PROBE = ("MAPHead_0/probe", "attn_pool.latent")
_GATE = ("Transformer/encoderblock_0/MlpBlock_0/gate/kernel", "blocks.0.mlp.fc1_g.weight")
_FC1 = ("Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel", "blocks.0.mlp.fc1.weight")
_FC2 = ("Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel", "blocks.0.mlp.fc2.weight")
_NORM = ("Transformer/encoderblock_0/MlpBlock_0/norm/scale", "blocks.0.mlp.norm.weight")
_ATTN = "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"


def infer_options_2(source: TensorSource, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    """Set mlp_type, mlp_norm, key_bias (and qkv_bias for EVA-02's q/v biases) and `map_head` in `fields`."""
    side = 0 if source.naming == FLAX else 1
    shapes = source.shapes

    def shown(keys: tuple[str, str]) -> str:
        return f"{source.file_name(keys[side])} ({'present' if keys[side] in shapes else 'absent'})"

    fields["map_head"], evidence["map_head"] = _PROBE[side] in shapes, shown(_PROBE)
    fields["mlp_norm"], evidence["mlp_norm"] = _NORM[side] in shapes, shown(_NORM)
    if _GATE[side] in shapes:
        fields["mlp_type"], evidence["mlp_type"] = "swiglu", shown(_GATE)
    else:
        fc1, fc2 = shapes.get(_FC1[side]), shapes.get(_FC2[side])
        packed = fc1 is not None and fc2 is not None and (fc1[1] if side == 0 else fc1[0]) == 2 * (
            fc2[0] if side == 0 else fc2[1])
        fields["mlp_type"] = "swiglu_packed" if packed else "gelu"
        evidence["mlp_type"] = f"{source.file_name(_FC1[side])} {tuple(fc1 or ())} against the width fc2 reads"
    if side == 1:
        q_bias = "blocks.0.attn.q_bias" in shapes
        fields["key_bias"] = not q_bias
        fields["qkv_bias"] = fields["qkv_bias"] or q_bias
        evidence["key_bias"] = evidence["qkv_bias"] = shown(("", "blocks.0.attn.q_bias"))
    else:
        key = _ATTN + "key/bias" in shapes
        fields["key_bias"] = key or _ATTN + "query/bias" not in shapes
        evidence["key_bias"] = source.file_name(_ATTN + "key/bias") + (" (present)" if key else " (absent)")
