"""Counter-based random numbers: uniforms that are a pure function of (seed, position).

The augmentation of an example depends only on the seed and the example's
position in the training stream, never on batch size, shard count, worker
count or what ran before, so runs that split the same stream differently, or
resume half-way, augment every example identically. Vectorised over positions.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective avalanche on uint64 (Steele et al., 2014)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, positions: np.ndarray, count: int) -> np.ndarray:
    """float64 (len(positions), count) in [0, 1), independent across seeds, positions and columns."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        key = _splitmix64(np.array([seed], np.uint64))
        stream = _splitmix64(key ^ np.asarray(positions, np.uint64)[:, None])
        bits = _splitmix64(stream + np.arange(count, dtype=np.uint64)[None, :] * _GOLDEN)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
