"""The twin of vit_jax/rope.py: the 2D rotary embedding, interleaved pairs (timm's RotaryEmbeddingCat)."""

from __future__ import annotations

import torch

TEMPERATURE = 10_000.0


def rope_table(grid: tuple[int, int], ref_grid: tuple[int, int] | None, head_dim: int) -> torch.Tensor:
    """(2, patches, head_dim) float64: sin and cos of each pair's angle, repeated for both members of the pair."""
    quarter = head_dim // 4
    bands = 1.0 / TEMPERATURE ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    axes = [torch.arange(n, dtype=torch.float64) * ((r / n) if ref_grid else 1.0)
            for n, r in zip(grid, ref_grid or grid)]
    rows, cols = torch.meshgrid(*axes, indexing="ij")
    angles = torch.cat([rows.reshape(-1, 1) * bands, cols.reshape(-1, 1) * bands], dim=1)
    angles = angles.repeat_interleave(2, dim=1)
    return torch.stack([angles.sin(), angles.cos()])


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape(x.shape)


def apply_rope(x: torch.Tensor, table: torch.Tensor, prefix: int) -> torch.Tensor:
    """q or k (batch, heads, seq, head_dim) with the tokens after the first `prefix` rotated."""
    sin, cos = table.to(x.dtype)
    patches = x[:, :, prefix:]
    return torch.cat([x[:, :, :prefix], patches * cos + rotate_pairs(patches) * sin], dim=2)
