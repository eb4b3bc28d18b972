"""Turns run results into judged report rows and one verdict.

Sections, in the order the first failure is looked for: forward (canonical
layers in forward order, attention maps included), gradients and updated
parameters (model order, Flax paths with the torch key they map to), losses of
the short training run. Every judged row gets the same three checks
(parity.tolerances): float64 agreement, the rounding rule and, for forward
layers and gradients, an absolute bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.compare import Metrics, compare, group_rms, norm_floor
from parity.harness import RunResult, TrainResult
from parity.tolerances import NORM_FLOOR_FRACTION, ZERO_GRADIENT_FRACTION, Criterion, Tolerances
from vit_jax.config import ViTConfig
from vit_jax.formats.mapping import param_rules, stem_rules

SECTIONS = ("forward", "gradients", "update", "loss")
# The checks a judged row's `failed_checks` names, in the rule's order (parity.tolerances): the float64 runs
# agree, rounding explains the difference, the absolute bound; "values" when no check could run (shapes
# differ, values are not finite).
CHECKS = ("float64", "rounding", "bound")
ZERO_GRADIENT_NOTE = "exact (float64) gradient is zero, both sides compute rounding noise"


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
    section: str, name: str, tol: Tolerances, criterion: Criterion | None, jax_value, torch_value,
    jax64_value, torch64_value, floor: float, judged: bool = True, **extra: Any,
) -> dict[str, Any]:
    """One row: the absolute bound (where there is one), the rounding rule and the float64 agreement.

    The f64 columns are relative to the same floored norms as rel_l2; the rounding
    rule compares plain L2 distances (printed relative to the float64 torch norm).
    """
    metrics = compare(jax_value, torch_value, floor)
    jax_f64 = compare(jax_value, jax64_value, floor)
    torch_f64 = compare(torch_value, torch64_value, floor)
    agreement = compare(jax64_value, torch64_value, floor)
    scale = max(agreement.ref_norm, floor, np.finfo(np.float64).tiny)
    problem = next((m.problem for m in (metrics, jax_f64, torch_f64, agreement) if m.problem), None)
    if problem:
        checks, failed, ratio = [problem], ["values"], float("nan")
    else:
        ok, text, ratio = tol.rounding.judge(metrics.l2, jax_f64.l2, torch_f64.l2, scale)
        outcomes = {"rounding": (ok, text)}
        if criterion is not None:
            outcomes["bound"] = criterion.judge(metrics)
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


def _floors(references: dict[str, np.ndarray], groups: dict[str, str]) -> dict[str, float]:
    """Denominator floor per tensor, from the typical magnitude of its group."""
    typical = {
        group: group_rms(references[k] for k in references if groups[k] == group) for group in set(groups.values())
    }
    return {k: norm_floor(np.size(v), typical[groups[k]], NORM_FLOOR_FRACTION) for k, v in references.items()}


def forward_rows(
    config: ViTConfig, tol: Tolerances, jax_run: RunResult, torch_run: RunResult,
    jax64: RunResult, torch64: RunResult,
) -> list[dict[str, Any]]:
    names = config.layer_names(attention=True)
    runs = (jax_run.intermediates, torch_run.intermediates, jax64.intermediates, torch64.intermediates)
    missing = [n for n in names if any(n not in run for run in runs)]
    if missing:
        raise KeyError(f"canonical layer(s) {missing} missing from a model's intermediates")
    groups = {n: "attention" if n.endswith("attn_probs") else "activations" for n in names}
    floors = _floors({n: torch_run.intermediates[n] for n in names}, groups)
    rows = []
    for depth, name in enumerate(names):
        criterion = tol.logits if name == "logits" else tol.layer
        rows.append(_judged_row("forward", name, tol, criterion, *(run[name] for run in runs), floors[name],
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
    section: str, config: ViTConfig, tol: Tolerances, criterion: Criterion | None, trees: tuple[dict, dict, dict, dict],
    group: str, zero_grad: set[str], criteria: dict[str, Criterion] | None = None,
) -> list[dict[str, Any]]:
    """Rows for per-parameter tensors (gradients or updated values), judged unless the exact gradient is zero.

    `criteria` gives some paths a bound other than `criterion`."""
    pairs = _flax_paths_in_model_order(config)
    floors = _floors({p: trees[1][p] for p, _ in pairs}, {p: group for p, _ in pairs})
    rows = []
    for path, torch_name in pairs:
        judged = path not in zero_grad
        rows.append(_judged_row(section, path, tol, (criteria or {}).get(path, criterion),
                                *(tree[path] for tree in trees), floors[path],
                                judged=judged, torch_name=torch_name, note=None if judged else ZERO_GRADIENT_NOTE))
    return rows


def gradient_rows(
    config: ViTConfig, tol: Tolerances, jax_run: RunResult, torch_run: RunResult,
    jax64: RunResult, torch64: RunResult, zero_grad: set[str],
) -> list[dict[str, Any]]:
    trees = (jax_run.grads, torch_run.grads, jax64.grads, torch64.grads)
    # a hybrid's ResNet stem has a bound of its own (tolerances.Tolerances.stem_gradient)
    stem = {path: tol.stem_gradient for rule in stem_rules(config) for path in rule.flax} if tol.stem_gradient else {}
    return _parameter_rows("gradients", config, tol, tol.gradient, trees, "gradients", zero_grad, stem)


def zero_gradient_params(config: ViTConfig, grads64: dict[str, np.ndarray]) -> set[str]:
    """Parameters whose exact (float64) gradient is zero up to rounding."""
    paths = [p for p, _ in _flax_paths_in_model_order(config)]
    typical = group_rms(grads64[p] for p in paths)
    return {
        p for p in paths
        if np.linalg.norm(np.asarray(grads64[p], np.float64))
        < norm_floor(np.size(grads64[p]), typical, ZERO_GRADIENT_FRACTION)
    }


def update_rows(
    config: ViTConfig, tol: Tolerances, jax_train: TrainResult, torch_train: TrainResult,
    jax64: TrainResult, torch64: TrainResult, zero_grad: set[str],
) -> list[dict[str, Any]]:
    trees = tuple(t.params_after_first_step for t in (jax_train, torch_train, jax64, torch64))
    return _parameter_rows("update", config, tol, tol.update, trees, "parameters", zero_grad)


def loss_rows(
    tol: Tolerances, jax_train: TrainResult, torch_train: TrainResult, jax64: TrainResult, torch64: TrainResult,
) -> list[dict[str, Any]]:
    """The loss at each step, judged by its drift from each side's float64 run (rounding accumulated over steps)."""
    rows = []
    curves = zip(jax_train.losses, torch_train.losses, jax64.losses, torch64.losses)
    for step, values in enumerate(curves, start=1):
        a, b, a64, b64 = (np.float64(v) for v in values)
        rows.append(_judged_row("loss", f"step {step}", tol, tol.loss, a, b, a64, b64, 0.0,
                                jax=float(a), torch=float(b), jax_f64=float(a64), torch_f64=float(b64)))
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, dict[str, Any] | None]:
    """(all judged rows pass, the first failing row in section order)."""
    for section in SECTIONS:
        for row in rows:
            if row["section"] == section and not row["passed"]:
                return False, row
    return True, None
