"""FLOPs of a ViT counted from its config (multiply-add = 2 FLOPs).

Counted: the patch-embedding convolution, per block the q/k/v and output
projections, the attention core (q.k^T and probs.v, both 2*S*S*inner, inner = D
unless attention_head_dim says otherwise), the two MLP
matmuls, the pre-logits and head matmuls. Not counted: layer norms, softmax,
GELU, bias adds, residuals (a few percent of the total at these widths). A
training step is taken as 3x the forward (backward = 2x forward), the usual
convention; docs/design.md's yardsticks (Ti/16 7.5 G, B/16 105 G per image) follow it.
"""

from __future__ import annotations

from vit_jax.config import ViTConfig


def forward_flops(config: ViTConfig) -> int:
    """Forward FLOPs for one image."""
    c = config
    d, m, s = c.hidden_size, c.mlp_dim, c.seq_len
    ph, pw = c.patch_hw
    flops = 2 * c.num_patches * (ph * pw * c.num_channels) * d
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
    flops += 2 * tokens_out * width * c.num_classes
    return flops


def train_step_flops(config: ViTConfig) -> int:
    """Forward + backward FLOPs for one image."""
    return 3 * forward_flops(config)
