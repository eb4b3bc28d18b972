"""The twin of vit_jax/heads.py: multihead attention pooling under timm's names (AttentionPoolLatent, `attn_pool`).

    latent (1, 1, D), q (D -> D), kv (D -> 2D: keys then values), proj, norm, mlp.fc1, mlp.fc2
"""

from __future__ import annotations

import torch
from torch import nn

from vit_jax.config import ViTConfig


class AttentionPool(nn.Module):
    def __init__(self, config: ViTConfig, mlp: nn.Module):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.scale = self.head_dim ** -0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, D), the probe's attention output (B, D))."""
        b, n, d = x.shape
        q = self.q(self.latent.expand(b, -1, -1).to(x.dtype)).reshape(b, 1, self.num_heads, self.head_dim)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q.transpose(1, 2) * self.scale) @ k.transpose(-2, -1)
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1).to(v.dtype)
        attn = self.proj((probs @ v).transpose(1, 2).reshape(b, 1, d))
        out = attn + self.mlp(self.norm(attn))
        return out[:, 0], attn[:, 0]
