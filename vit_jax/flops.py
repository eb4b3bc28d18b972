"""FLOPs of a ViT counted from its config (multiply-add = 2 FLOPs).

Counted: a hybrid's ResNet stem convolutions, the patch-embedding convolution, per block the q/k/v and output
projections, the attention core (q.k^T and probs.v, both 2*S*S*inner, inner = D
unless attention_head_dim says otherwise), the two MLP
matmuls, the pre-logits and head matmuls. Not counted: layer norms, softmax,
GELU, bias adds, residuals (a few percent of the total at these widths). A
training step is taken as 3x the forward (backward = 2x forward), the usual
convention; docs/design.md's yardsticks (Ti/16 7.5 G, B/16 105 G per image) follow it.
"""

from __future__ import annotations

from vit_jax.config import ViTConfig


def _half(hw: tuple[int, int]) -> tuple[int, int]:
    return -(-hw[0] // 2), -(-hw[1] // 2)  # 'SAME' stride 2


def stem_flops(config: ViTConfig) -> int:
    """The ResNet stem's convolutions ('SAME' padded: out = ceil(in / stride)); 0 for a plain ViT."""
    c = config
    if not c.is_hybrid:
        return 0
    width = int(64 * c.width_factor)
    hw = _half(c.image_hw)
    flops = 2 * hw[0] * hw[1] * 7 * 7 * c.num_channels * width  # root conv
    hw, cin = _half(hw), width  # max pool
    for i, units in enumerate(c.resnet_layers):
        f = width * 2**i
        for j in range(units):
            out = _half(hw) if i > 0 and j == 0 else hw
            pixels_in, pixels = hw[0] * hw[1], out[0] * out[1]
            flops += 2 * (pixels_in * cin * f + pixels * 9 * f * f + pixels * f * 4 * f)  # conv1, conv2, conv3
            if j == 0:
                flops += 2 * pixels * cin * 4 * f  # projection
            hw, cin = out, 4 * f
    return flops


def forward_flops(config: ViTConfig) -> int:
    """Forward FLOPs for one image."""
    c = config
    d, m, s = c.hidden_size, c.mlp_dim, c.seq_len
    ph, pw = c.patch_hw
    flops = stem_flops(c) + 2 * c.num_patches * (ph * pw * c.stem_width) * d
    inner = c.inner_dim  # d unless attention_head_dim says otherwise
    per_block = 2 * s * d * 3 * inner  # q, k, v
    per_block += 2 * 2 * s * s * inner  # scores and weighted sum
    per_block += 2 * s * inner * d if c.attention_out_proj else 0  # output projection
    per_block += 2 * 2 * s * d * m  # MLP
    flops += c.num_layers * per_block
    tokens_out = s if c.classifier in ("unpooled", "token_unpooled") else 1
    width = d
    if c.representation_size is not None:
        flops += 2 * tokens_out * d * c.representation_size
        width = c.representation_size
    flops += 2 * tokens_out * width * c.num_classes * (1 + c.distilled)  # the distillation head
    return flops


def train_step_flops(config: ViTConfig) -> int:
    """Forward + backward FLOPs for one image."""
    return 3 * forward_flops(config)
