"""Stratified, seeded train/eval splits of a label array."""

from __future__ import annotations

import numpy as np

from vit_jax.data.errors import DataError


def stratified_split(labels: np.ndarray, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, eval), each sorted, with `eval_fraction` of every class in eval.

    Per class, round(fraction * count) examples go to eval, but a class with at
    least two examples always keeps one on each side, so both splits see every
    class. The same labels, fraction and seed always give the same split.
    """
    labels = np.asarray(labels)
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {eval_fraction!r}")
    rng = np.random.default_rng(seed)
    train_parts, eval_parts = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_eval = int(round(eval_fraction * len(members)))
        if len(members) >= 2:
            n_eval = min(max(n_eval, 1), len(members) - 1)
        eval_parts.append(members[:n_eval])
        train_parts.append(members[n_eval:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(eval_parts))
