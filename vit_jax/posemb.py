"""Position embeddings: the fixed 2D sin-cos table and resizing to a new grid.

Plain NumPy, so converters and both frameworks can use the same numbers.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

RESIZE_METHODS = {"bilinear": 1, "bicubic": 3}


def sincos_2d(grid_size: tuple[int, int], width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2D sin-cos embedding of shape (1, gh*gw, width), as in big_vision.

    Computed in float64; callers cast. Row-major over the grid, like the patches.
    """
    if width % 4:
        raise ValueError(f"sin-cos embedding width must be divisible by 4, got {width}")
    gh, gw = grid_size
    y, x = np.mgrid[:gh, :gw]
    quarter = width // 4
    omega = np.arange(quarter, dtype=np.float64) / max(quarter - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.reshape(-1).astype(np.float64), omega)
    x = np.einsum("m,d->md", x.reshape(-1).astype(np.float64), omega)
    table = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return table[None]


def resize_pos_embed(
    posemb: np.ndarray,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
    method: str = "bilinear",
) -> np.ndarray:
    """Resize a (1, prefix + gh*gw, D) learned position embedding to a new grid.

    The prefix (class-token) slots are kept apart and unchanged. 'bilinear' is
    `scipy.ndimage.zoom(order=1)` on the grid, i.e. Google's `vit_jax` behaviour
    (align_corners=True); 'bicubic' is the same with order 3. Computed in
    float64 and returned in the input dtype.
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} is not one of {tuple(RESIZE_METHODS)}")
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"position embedding must have shape (1, tokens, dim), got {posemb.shape}")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[0, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(np.sqrt(grid.shape[0])))
        if side * side != grid.shape[0]:
            raise ValueError(
                f"cannot infer the grid of {grid.shape[0]} position embeddings "
                f"(not a square); pass old_grid"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != grid.shape[0]:
        raise ValueError(
            f"old grid {old_grid} has {old_grid[0] * old_grid[1]} cells, "
            f"but the embedding has {grid.shape[0]} non-prefix tokens"
        )
    if tuple(old_grid) == tuple(new_grid):
        return posemb
    dtype = posemb.dtype
    grid = grid.astype(np.float64).reshape(old_grid[0], old_grid[1], -1)
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=RESIZE_METHODS[method])
    if grid.shape[:2] != tuple(new_grid):  # zoom rounds the output size; guard it
        raise AssertionError(f"resize produced grid {grid.shape[:2]}, expected {new_grid}")
    grid = grid.reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix.astype(np.float64), grid], axis=1).astype(dtype)
