"""Position embeddings: the fixed 2D sin-cos table and resizing to a new grid.

Plain NumPy, so converters and both frameworks can use the same numbers.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

# scipy.ndimage.zoom orders (align_corners=True grids), and torch's F.interpolate(mode='bicubic',
# align_corners=False) as NumPy: 'torch_bicubic' (a=-0.75; transformers' models) and
# 'torch_bicubic_antialias' (antialias=True, PIL's a=-0.5 with a widened kernel; timm's resample_abs_pos_embed).
RESIZE_METHODS = {"bilinear": 1, "bicubic": 3, "torch_bicubic": None, "torch_bicubic_antialias": None}


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter `a`."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def torch_bicubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """(n_out, n_in) weights of torch's 1-D bicubic resampling (align_corners=False), in float64."""
    scale, m = n_in / n_out, np.zeros((n_out, n_in))
    if not antialias:  # 4 taps at the source coordinate, edges clamped
        src = (np.arange(n_out) + 0.5) * scale - 0.5
        x0 = np.floor(src).astype(int)
        for k in range(-1, 3):
            np.add.at(m, (np.arange(n_out), np.clip(x0 + k, 0, n_in - 1)), _cubic(src - x0 - k, -0.75))
        return m
    support, stretch = 2.0 * max(scale, 1.0), 1.0 / max(scale, 1.0)  # downsampling widens the kernel
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        weights = _cubic((np.arange(lo, hi) - center + 0.5) * stretch, -0.5)
        m[i, lo:hi] = weights / weights.sum()
    return m


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
    (align_corners=True); 'bicubic' is the same with order 3; 'torch_bicubic' and
    'torch_bicubic_antialias' are torch's, as transformers and timm resize (RESIZE_METHODS). Computed in
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
    if method.startswith("torch_"):
        rows, cols = (torch_bicubic_matrix(o, n, method.endswith("antialias")) for o, n in zip(old_grid, new_grid))
        grid = np.einsum("ij,jkc,lk->ilc", rows, grid, cols)
    else:
        zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
        grid = scipy.ndimage.zoom(grid, zoom, order=RESIZE_METHODS[method])
    if grid.shape[:2] != tuple(new_grid):  # zoom rounds the output size; guard it
        raise AssertionError(f"resize produced grid {grid.shape[:2]}, expected {new_grid}")
    grid = grid.reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix.astype(np.float64), grid], axis=1).astype(dtype)
