"""The twin of vit_jax/glu.py: SwiGLU MLPs under timm's names (SwiGLUPacked `fc1`; SwiGLU `fc1_g`, `fc1_x`, `norm`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vit_jax.config import ViTConfig


class SwiGLU(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        d, h = config.hidden_size, config.mlp_dim
        self.packed = config.mlp_type == "swiglu_packed"
        if self.packed:
            self.fc1 = nn.Linear(d, 2 * h)  # first half the gate (timm's GluMlp gate_last=False)
        else:
            self.fc1_g = nn.Linear(d, h)
            self.fc1_x = nn.Linear(d, h)
        self.norm = nn.LayerNorm(h, eps=config.layer_norm_eps) if config.mlp_norm else nn.Identity()
        self.fc2 = nn.Linear(h, d)
        self.drop = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1) if self.packed else (self.fc1_g(x), self.fc1_x(x))
        return self.drop(self.fc2(self.drop(self.norm(F.silu(gate) * value))))
