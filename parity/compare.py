"""Per-tensor error metrics between a candidate (JAX) and a reference (PyTorch) array.

All arithmetic is float64, whatever the inputs' dtypes (bfloat16 included).

Relative errors need a denominator that cannot collapse: a tensor whose
reference is ~0 (the key-bias gradient, which softmax makes zero in exact
arithmetic; a zero-initialised layer) would otherwise turn rounding noise
into a 100% "error". So the denominator is max(||reference||, floor), where
the floor is a fixed fraction of the typical magnitude of the tensor's group
(`group_rms`, the median per-element RMS over e.g. all activations) times
sqrt(size). Above the floor the metric is the plain relative L2 error; below
it, it becomes an absolute error measured in units of that typical magnitude.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Metrics:
    shape: tuple[int, ...]
    max_abs: float  # max |candidate - reference|
    mean_abs: float  # mean |candidate - reference|
    l2: float  # ||candidate - reference||
    rel_l2: float  # ||candidate - reference|| / max(||reference||, floor)
    cosine: float | None  # None where the reference is below the floor (direction is noise)
    ref_norm: float  # ||reference||
    floor: float  # the denominator floor that applied
    scale: float  # max |reference|, floored like the norm (for max-abs criteria)
    problem: str | None = None  # e.g. a shape mismatch; the row then fails whatever the tolerance

    @property
    def floored(self) -> bool:
        return self.ref_norm < self.floor


def _f64(array) -> np.ndarray:
    return np.asarray(array).astype(np.float64, copy=False)


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """<a, b> of two float64 arrays in NumPy's own loops, not BLAS: a threaded BLAS dot wakes its threads for each
    of the report's many small tensors, between the frameworks' own threaded runs, and cost up to a tenth of a
    small model's report in CPU time."""
    return float(np.einsum("i,i->", a.ravel(), b.ravel()))


def norm(a: np.ndarray) -> float:
    return math.sqrt(dot(a, a))


def rms(array) -> float:
    array = _f64(array)
    return float(np.sqrt(np.mean(array**2))) if array.size else 0.0


def group_rms(references: Iterable[np.ndarray]) -> float:
    """Typical per-element magnitude of a group of tensors: the median of their RMS values.

    The median ignores the few near-zero members that the floor exists for.
    """
    values = [rms(r) for r in references]
    return float(np.median(values)) if values else 0.0


def norm_floor(size: int, typical_rms: float, fraction: float) -> float:
    """The norm a tensor of `size` elements would have at `fraction` of the group's typical magnitude."""
    return fraction * typical_rms * math.sqrt(max(size, 1))


@dataclasses.dataclass(frozen=True)
class Sums:
    """What `compare` needs from the two arrays before the floor is known (so the arrays can go).

    The floor comes from a whole group of tensors (`group_rms`), so a report
    that meets its tensors one block at a time keeps these and builds the
    Metrics at the end: the same numbers as comparing the arrays themselves.
    """

    shape: tuple[int, ...]
    size: int
    l2: float
    ref_norm: float
    cand_norm: float
    dot: float  # <candidate, reference>
    max_abs: float
    mean_abs: float
    max_ref: float  # max |reference|
    problem: str | None = None


def sums(candidate, reference) -> Sums:
    a, b = _f64(candidate), _f64(reference)
    if a.shape != b.shape:
        nan = float("nan")
        problem = f"shape {a.shape} != reference {b.shape}"
        return Sums(tuple(b.shape), b.size, nan, nan, nan, nan, nan, nan, nan, problem)
    diff = a - b
    abs_diff = np.abs(diff)
    problem = None if np.all(np.isfinite(a)) and np.all(np.isfinite(b)) else "non-finite values"
    return Sums(
        shape=tuple(b.shape),
        size=int(b.size),
        l2=norm(diff),
        ref_norm=norm(b),
        cand_norm=norm(a),
        dot=dot(a, b),
        max_abs=float(np.max(abs_diff)) if diff.size else 0.0,
        mean_abs=float(np.mean(abs_diff)) if diff.size else 0.0,
        max_ref=float(np.max(np.abs(b))) if b.size else 0.0,
        problem=problem,
    )


def pair_sums(arrays: list, pairs: list[tuple[int, int]]) -> tuple[Sums, ...]:
    """`sums(arrays[i], arrays[j])` for each (i, j), each array's own norm, max and finiteness computed once."""
    arrays = [_f64(a) for a in arrays]
    if len({a.shape for a in arrays}) > 1:
        return tuple(sums(arrays[i], arrays[j]) for i, j in pairs)
    norms = [norm(a) for a in arrays]
    max_abs = [float(np.max(np.abs(a))) if a.size else 0.0 for a in arrays]
    finite = [bool(np.all(np.isfinite(a))) for a in arrays]
    out = []
    for i, j in pairs:
        a, b = arrays[i], arrays[j]
        abs_diff = np.abs(a - b)
        out.append(Sums(
            shape=tuple(b.shape), size=int(b.size), l2=norm(abs_diff), ref_norm=norms[j],
            cand_norm=norms[i], dot=dot(a, b), max_abs=float(np.max(abs_diff)) if b.size else 0.0,
            mean_abs=float(np.mean(abs_diff)) if b.size else 0.0, max_ref=max_abs[j],
            problem=None if finite[i] and finite[j] else "non-finite values",
        ))
    return tuple(out)


def metrics(s: Sums, floor: float = 0.0) -> Metrics:
    if s.problem and s.problem.startswith("shape"):
        nan = float("nan")
        return Metrics(s.shape, nan, nan, nan, nan, None, nan, floor, nan, s.problem)
    tiny = np.finfo(np.float64).tiny
    denominator = max(s.ref_norm, floor, tiny)
    cosine = None
    if s.ref_norm >= floor and s.ref_norm > 0 and s.cand_norm > 0:
        cosine = float(np.clip(s.dot / (s.cand_norm * s.ref_norm), -1.0, 1.0))
    elif s.ref_norm >= floor and s.ref_norm > 0:
        cosine = 0.0
    scale_floor = floor / math.sqrt(max(s.size, 1))
    return Metrics(
        shape=s.shape,
        max_abs=s.max_abs,
        mean_abs=s.mean_abs,
        l2=s.l2,
        rel_l2=s.l2 / denominator,
        cosine=cosine,
        ref_norm=s.ref_norm,
        floor=floor,
        scale=max(s.max_ref, scale_floor, tiny),
        problem=s.problem,
    )


def compare(candidate, reference, floor: float = 0.0) -> Metrics:
    return metrics(sums(candidate, reference), floor)
