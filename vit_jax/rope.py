"""2D rotary position embedding, the `rope` option (timm's RotaryEmbeddingCat, `rope_type='cat'`, interleaved pairs).

Each head's width splits in pairs (x0, x1), (x2, x3), ...; pair j turns by the angle position * band(j). The
first half of the pairs follow the patch's row, the second half its column; the bands are
1 / 10000 ** (k / (head_dim / 4)) for k < head_dim / 4. Positions are patch indices, scaled to `rope_ref_grid`
when the model runs at another grid than it was trained on (timm's ref_feat_shape). Only the patch tokens
turn; the class token keeps its q and k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.config import ViTConfig

Array = jax.Array
TEMPERATURE = 10_000.0


@functools.lru_cache(maxsize=32)
def rope_table(grid: tuple[int, int], ref_grid: tuple[int, int] | None, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos), each (patches, head_dim) in float64, every angle repeated for the two members of its pair."""
    bands = 1.0 / TEMPERATURE ** (np.arange(head_dim // 4, dtype=np.float64) / (head_dim // 4))
    axes = [np.arange(n, dtype=np.float64) * ((r / n) if ref_grid else 1.0)
            for n, r in zip(grid, ref_grid or grid)]
    rows, cols = np.meshgrid(*axes, indexing="ij")  # (gh, gw) each
    angles = np.concatenate([rows.reshape(-1, 1) * bands, cols.reshape(-1, 1) * bands], axis=1)
    angles = np.repeat(angles, 2, axis=1)  # (patches, head_dim): [a0, a0, a1, a1, ...]
    return np.sin(angles), np.cos(angles)


def rotate_pairs(x: Array) -> Array:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): each interleaved pair turned by 90 degrees."""
    pairs = jnp.reshape(x, (*x.shape[:-1], -1, 2))
    return jnp.reshape(jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1), x.shape)


def apply_rope(c: ViTConfig, x: Array) -> Array:
    """q or k (batch, seq, heads, head_dim) with the patch tokens rotated (the prefix tokens unchanged)."""
    sin, cos = rope_table(c.grid_size, c.rope_ref_grid, x.shape[-1])
    sin, cos = (jnp.asarray(t[None, :, None, :], x.dtype) for t in (sin, cos))
    prefix, patches = x[:, :c.num_prefix_tokens], x[:, c.num_prefix_tokens:]
    return jnp.concatenate([prefix, patches * cos + rotate_pairs(patches) * sin], axis=1)
