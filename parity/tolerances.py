"""Every tolerance of the parity report, in one place (the report prints this table).

Both dtypes also require the float64 runs of the two frameworks to agree to
1e-10 (they differ by float64 rounding, ~1e-15): a check of the function
itself, independent of the dtype under test.

float32 on CPU: the two frameworks differ by rounding only (~1e-7..1e-6
relative), so each canonical layer must agree to 1e-5 relative L2 and the
logits to 1e-5 of their largest magnitude. Gradients pass through roughly
twice as many operations: 1e-4; a hybrid's ResNet stem 2e-2 (`stem_gradient`
below). One AdamW step moves parameters by ~lr, so the
updated parameters agree to 1e-6 relative.

bfloat16 compute keeps 8 bits of mantissa: values agree in direction (cosine),
not to many digits. The backward pass and the optimizer step accumulate more
bf16 rounding than the forward, hence their looser (measured) bounds.
"""

from __future__ import annotations

import dataclasses
import math

from parity.compare import Metrics

# Denominator floor of the relative error, as a fraction of the group's typical
# magnitude (see parity.compare): below it a tensor is judged on absolute error.
NORM_FLOOR_FRACTION = 1e-2
# A parameter whose float64 gradient norm is below this fraction of its group's
# typical gradient norm has zero gradient in exact arithmetic (the key bias:
# softmax ignores a shift of every key logit). Adam turns such rounding noise
# into a step of up to lr per element with a random sign, on each side
# independently, so its gradient and updated value are shown but not judged.
ZERO_GRADIENT_FRACTION = 1e-6


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A row passes when every bound that is set holds."""

    max_rel_l2: float | None = None
    min_cosine: float | None = None
    max_abs_over_scale: float | None = None  # max |a - b| / max |b|

    def judge(self, m: Metrics) -> tuple[bool, str]:
        """(passed, the bounds checked with their values), e.g. 'rel_l2 3.1e-07 <= 1e-05'."""
        if m.problem:
            return False, m.problem
        checks: list[tuple[bool, str]] = []
        if self.max_rel_l2 is not None:
            checks.append((m.rel_l2 <= self.max_rel_l2, f"rel_l2 {m.rel_l2:.2e} <= {self.max_rel_l2:g}"))
        if self.min_cosine is not None:
            if m.cosine is None:
                # Reference below the floor: its direction is noise. Equal-norm
                # vectors with cosine c differ by sqrt(2 (1 - c)) relative.
                bound = cosine_as_rel_l2(self.min_cosine)
                checks.append((m.rel_l2 <= bound, f"floored rel_l2 {m.rel_l2:.2e} <= {bound:.3g} (cosine n/a)"))
            else:
                checks.append((m.cosine >= self.min_cosine, f"cosine {m.cosine:.6f} >= {self.min_cosine:g}"))
        if self.max_abs_over_scale is not None:
            ratio = m.max_abs / m.scale
            checks.append((ratio <= self.max_abs_over_scale, f"max_abs/scale {ratio:.2e} <= {self.max_abs_over_scale:g}"))
        return all(ok for ok, _ in checks), "; ".join(text for _, text in checks)

    def describe(self) -> str:
        parts = []
        if self.max_rel_l2 is not None:
            parts.append(f"rel_l2 <= {self.max_rel_l2:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.max_abs_over_scale is not None:
            parts.append(f"max_abs <= {self.max_abs_over_scale:g} x max|torch|")
        return " and ".join(parts)


def cosine_as_rel_l2(min_cosine: float) -> float:
    return math.sqrt(2.0 * (1.0 - min_cosine))


@dataclasses.dataclass(frozen=True)
class Tolerances:
    dtype: str
    layer: Criterion  # every canonical intermediate, attention maps included
    logits: Criterion  # the model output (replaces `layer` for the logits row)
    gradient: Criterion  # per parameter
    update: Criterion  # parameters after one AdamW step
    loss: Criterion  # the loss at every step of the short training run
    # The two float64 runs (forward and gradient rows): they differ by float64
    # rounding only, so this catches a functional difference far smaller than
    # the float32 bounds can see (e.g. LayerNorm eps 1e-5 instead of 1e-6).
    float64: Criterion
    # A hybrid's ResNet stem parameters (None: `gradient`). A weight-standardised conv followed by
    # GroupNorm is nearly scale-invariant, so its weight gradient is a small difference of large
    # terms: each framework's float32 gradient sits up to ~5e-3 from its own float64 run (random
    # R50+ViT-B_16, JAX ~2e-3, torch ~5e-3), while the float64 runs agree to ~1e-14.
    stem_gradient: Criterion | None = None

    def as_dict(self) -> dict[str, str]:
        return {
            field.name: getattr(self, field.name).describe()
            for field in dataclasses.fields(self)[1:]
            if getattr(self, field.name) is not None
        }


TOLERANCES = {
    "float32": Tolerances(
        dtype="float32",
        layer=Criterion(max_rel_l2=1e-5),
        logits=Criterion(max_rel_l2=1e-5, max_abs_over_scale=1e-5),
        gradient=Criterion(max_rel_l2=1e-4),
        update=Criterion(max_rel_l2=1e-6),
        loss=Criterion(max_rel_l2=1e-5),
        float64=Criterion(max_rel_l2=1e-10),
        stem_gradient=Criterion(max_rel_l2=2e-2),
    ),
    "bfloat16": Tolerances(
        dtype="bfloat16",
        layer=Criterion(min_cosine=0.999),
        logits=Criterion(min_cosine=0.999, max_rel_l2=2e-2),
        gradient=Criterion(min_cosine=0.99),
        # Adam's first step is ~lr * sign(g): bf16 gradient noise flips the sign
        # of the elements whose |g| is near zero, a few percent of them.
        update=Criterion(min_cosine=0.9),
        loss=Criterion(max_rel_l2=2e-2),
        float64=Criterion(max_rel_l2=1e-10),
    ),
}


def tolerances_for(dtype: str) -> Tolerances:
    if dtype not in TOLERANCES:
        raise ValueError(f"no parity tolerances for dtype {dtype!r}; expected one of {', '.join(TOLERANCES)}")
    return TOLERANCES[dtype]


RELATIVE_ERROR_DEFINITION = (
    "rel_l2 = ||jax - torch|| / max(||torch||, floor), floor = "
    f"{NORM_FLOOR_FRACTION:g} x (median per-element RMS of the torch tensors in the same group: "
    "activations, attention maps, gradients or parameters) x sqrt(size). Above the floor this is the plain "
    "relative L2 error; below it (a tensor that is ~0 in exact arithmetic) it is an absolute error in units "
    "of the group's typical magnitude, and cosine is n/a (for cosine bounds the row is then judged on "
    "rel_l2 <= sqrt(2 (1 - min_cosine))). The f64 columns use the same definition against each framework's "
    "own float64 run on CPU."
)
