"""Turns run results into judged report rows and one verdict.

Sections, in the order the first failure is looked for: forward (canonical
layers in forward order, attention maps included), gradients and updated
parameters (model order, Flax paths with the torch key they map to), losses of
the short training run. Every judged row gets the same three checks
(parity.tolerances): float64 agreement, the rounding rule and, for forward
layers and gradients, an absolute bound.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from parity.compare import Metrics, Sums, norm, norm_floor, pair_sums, rms
from parity.compare import metrics as to_metrics
from parity.tolerances import NORM_FLOOR_FRACTION, ZERO_GRADIENT_FRACTION, Criterion, Tolerances, shared_rounding
from vit_jax.config import ViTConfig
from vit_jax.formats.mapping import param_rules, stem_rules

SECTIONS = ("forward", "gradients", "update", "loss")
# The checks a judged row's `failed_checks` names, in the rule's order (parity.tolerances): the float64 runs
# agree, rounding explains the difference, the absolute bound; "values" when no check could run (shapes
# differ, values are not finite).
CHECKS = ("float64", "rounding", "bound")
ZERO_GRADIENT_NOTE = "exact (float64) gradient is zero, both sides compute rounding noise"


@dataclasses.dataclass(frozen=True)
class Measured:
    """One tensor's four comparisons, kept while the arrays themselves are let go.

    pairs: jax vs torch, jax vs f64 jax, torch vs f64 torch, f64 jax vs f64 torch.
    """

    pairs: tuple[Sums, Sums, Sums, Sums]
    torch_rms: float  # per-element RMS of the torch (low-precision) tensor: its group's norm floor
    jax64_norm: float  # and of the f64 jax tensor: whether an exact gradient is zero
    jax64_rms: float

    @property
    def size(self) -> int:
        return self.pairs[0].size


def measure(jax_value, torch_value, jax64_value, torch64_value) -> Measured:
    a, b, a64, b64 = (np.asarray(v).astype(np.float64, copy=False) for v in (jax_value, torch_value, jax64_value,
                                                                            torch64_value))
    pairs = pair_sums([a, b, a64, b64], [(0, 1), (0, 2), (1, 3), (2, 3)])
    return Measured(pairs, rms(b), norm(a64), rms(a64))


def _row(section: str, name: str, metrics: Metrics, judged: bool, passed: bool, checked: str,
         **extra: Any) -> dict[str, Any]:
    return {
        "section": section,
        "name": name,
        "shape": list(metrics.shape),
        "max_abs": metrics.max_abs,
        "mean_abs": metrics.mean_abs,
        "rel_l2": metrics.rel_l2,
        "cosine": metrics.cosine,
        "ref_norm": metrics.ref_norm,
        "floored": bool(metrics.floored),
        "judged": judged,
        "passed": bool(passed),
        "check": checked,
        **extra,
    }


def _judged_row(
    section: str, name: str, tol: Tolerances, criterion: Criterion | None, measured: Measured,
    floor: float, judged: bool = True, **extra: Any,
) -> dict[str, Any]:
    """One row: the absolute bound (where there is one), the rounding rule and the float64 agreement.

    The f64 columns are relative to the same floored norms as rel_l2; the rounding
    rule compares plain L2 distances (printed relative to the float64 torch norm).
    """
    metrics, jax_f64, torch_f64, agreement = (to_metrics(pair, floor) for pair in measured.pairs)
    scale = max(agreement.ref_norm, floor, np.finfo(np.float64).tiny)
    problem = next((m.problem for m in (metrics, jax_f64, torch_f64, agreement) if m.problem), None)
    if problem:
        checks, failed, ratio = [problem], ["values"], float("nan")
    else:
        ok, text, ratio = tol.rounding.judge(metrics.l2, jax_f64.l2, torch_f64.l2, scale)
        outcomes = {"rounding": (ok, text)}
        if criterion is not None:
            ok, text = criterion.judge(metrics)
            if not ok:  # sharp weights: rounding both sides share passes, one side's alone fails
                ok, why = shared_rounding(jax_f64.rel_l2, torch_f64.rel_l2)
                text = f"{text}: {why}"
            outcomes["bound"] = (ok, text)
        ok, text = tol.float64.judge(agreement)
        outcomes["float64"] = (ok, f"float64 jax vs torch {text}")
        checks = [text for _, text in outcomes.values()]
        failed = [check for check in CHECKS if check in outcomes and not outcomes[check][0]]
    return _row(
        section, name, metrics, judged, not (judged and failed), "; ".join(checks) if judged else "not judged",
        failed_checks=failed if judged else [],
        jax_vs_f64=jax_f64.rel_l2, torch_vs_f64=torch_f64.rel_l2, f64_jax_vs_torch=agreement.rel_l2,
        rounding_ratio=ratio, **extra,
    )


def _floors(measured: dict[str, Measured], groups: dict[str, str]) -> dict[str, float]:
    """Denominator floor per tensor, from the typical magnitude (median RMS, `group_rms`) of its group."""
    typical = {
        group: float(np.median([measured[k].torch_rms for k in measured if groups[k] == group]))
        for group in set(groups.values())
    }
    return {k: norm_floor(m.size, typical[groups[k]], NORM_FLOOR_FRACTION) for k, m in measured.items()}


def forward_rows(config: ViTConfig, tol: Tolerances, measured: dict[str, Measured],
                 only: list[str] | None = None) -> list[dict[str, Any]]:
    """Canonical layers in forward order, from each layer's four comparisons (`only`: those of them compared)."""
    names = [n for n in config.layer_names(attention=True) if only is None or n in only]
    missing = [n for n in names if n not in measured]
    if missing:
        raise KeyError(f"canonical layer(s) {missing} missing from a model's intermediates")
    groups = {n: "attention" if n.endswith("attn_probs") else "activations" for n in names}
    floors = _floors({n: measured[n] for n in names}, groups)
    rows = []
    for depth, name in enumerate(names):
        criterion = tol.logits if name == "logits" else tol.layer
        rows.append(_judged_row("forward", name, tol, criterion, measured[name], floors[name],
                                depth=depth, group=groups[name]))
    return rows


def _flax_paths_in_model_order(config: ViTConfig) -> list[tuple[str, str]]:
    """(Flax path, torch key it maps to) for every parameter, in the mapping table's order."""
    pairs = []
    for rule in param_rules(config.replace(scan=False)):
        for i, path in enumerate(rule.flax):
            torch_name = rule.torch if len(rule.flax) == 1 else f"{rule.torch}[{'qkv'[i]}]"
            pairs.append((path, torch_name))
    return pairs


def _parameter_rows(
    section: str, config: ViTConfig, tol: Tolerances, criterion: Criterion | None, measured: dict[str, Measured],
    group: str, zero_grad: set[str], criteria: dict[str, Criterion] | None = None,
) -> list[dict[str, Any]]:
    """Rows for per-parameter tensors (gradients or updated values), judged unless the exact gradient is zero.

    `criteria` gives some paths a bound other than `criterion`."""
    pairs = _flax_paths_in_model_order(config)
    floors = _floors({p: measured[p] for p, _ in pairs}, {p: group for p, _ in pairs})
    rows = []
    for path, torch_name in pairs:
        judged = path not in zero_grad
        rows.append(_judged_row(section, path, tol, (criteria or {}).get(path, criterion), measured[path],
                                floors[path], judged=judged, torch_name=torch_name,
                                note=None if judged else ZERO_GRADIENT_NOTE))
    return rows


def gradient_rows(
    config: ViTConfig, tol: Tolerances, measured: dict[str, Measured], zero_grad: set[str],
) -> list[dict[str, Any]]:
    # a hybrid's ResNet stem has a bound of its own (tolerances.Tolerances.stem_gradient)
    stem = {path: tol.stem_gradient for rule in stem_rules(config) for path in rule.flax} if tol.stem_gradient else {}
    return _parameter_rows("gradients", config, tol, tol.gradient, measured, "gradients", zero_grad, stem)


def zero_gradient_params(config: ViTConfig, measured: dict[str, Measured]) -> set[str]:
    """Parameters whose exact (float64) gradient is zero up to rounding."""
    paths = [p for p, _ in _flax_paths_in_model_order(config)]
    typical = float(np.median([measured[p].jax64_rms for p in paths]))
    return {
        p for p in paths
        if measured[p].jax64_norm < norm_floor(measured[p].size, typical, ZERO_GRADIENT_FRACTION)
    }


def update_rows(
    config: ViTConfig, tol: Tolerances, measured: dict[str, Measured], zero_grad: set[str],
) -> list[dict[str, Any]]:
    return _parameter_rows("update", config, tol, tol.update, measured, "parameters", zero_grad)


def loss_rows(tol: Tolerances, curves: tuple[list[float], ...]) -> list[dict[str, Any]]:
    """The loss at each step (jax, torch, f64 jax, f64 torch curves), judged by its drift from each side's
    float64 run (rounding accumulated over steps)."""
    rows = []
    for step, values in enumerate(zip(*curves), start=1):
        a, b, a64, b64 = (np.float64(v) for v in values)
        rows.append(_judged_row("loss", f"step {step}", tol, tol.loss, measure(a, b, a64, b64), 0.0,
                                jax=float(a), torch=float(b), jax_f64=float(a64), torch_f64=float(b64)))
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, dict[str, Any] | None]:
    """(all judged rows pass, the first failing row in section order)."""
    for section in SECTIONS:
        for row in rows:
            if row["section"] == section and not row["passed"]:
                return False, row
    return True, None
