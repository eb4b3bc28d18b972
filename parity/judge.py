"""Turns run results into judged report rows and one verdict.

Sections, in the order the first failure is looked for: forward (canonical
layers in forward order, attention maps included), gradients and updated
parameters (model order, Flax paths with the torch key they map to), losses of
the short training run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.compare import Metrics, compare, group_rms, norm_floor
from parity.harness import RunResult, TrainResult
from parity.mapping import param_rules, stem_rules
from parity.tolerances import NORM_FLOOR_FRACTION, ZERO_GRADIENT_FRACTION, Criterion, Tolerances
from vit_jax.config import ViTConfig

SECTIONS = ("forward", "gradients", "update", "loss")
ZERO_GRADIENT_NOTE = "exact (float64) gradient is zero, both sides compute rounding noise"


def _row(
    section: str, name: str, metrics: Metrics, criterion: Criterion | None,
    float64: tuple[Metrics, Criterion] | None = None, **extra: Any,
) -> dict[str, Any]:
    passed, checked = criterion.judge(metrics) if criterion else (True, "not judged")
    if criterion and float64:
        ok, text = float64[1].judge(float64[0])
        passed, checked = passed and ok, f"{checked}; float64 jax vs torch {text}"
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
        "judged": criterion is not None,
        "passed": bool(passed),
        "check": checked,
        **extra,
    }


def _floors(references: dict[str, np.ndarray], groups: dict[str, str]) -> dict[str, float]:
    """Denominator floor per tensor, from the typical magnitude of its group."""
    typical = {
        group: group_rms(references[k] for k in references if groups[k] == group) for group in set(groups.values())
    }
    return {k: norm_floor(np.size(v), typical[groups[k]], NORM_FLOOR_FRACTION) for k, v in references.items()}


def _f64_columns(key: str, jax_run, torch_run, jax64, torch64, floor: float) -> tuple[dict[str, float], Metrics]:
    """Each side's distance from its own float64 run; the float64 runs' agreement (also as Metrics, to judge)."""
    agreement = compare(jax64[key], torch64[key], floor)
    columns = {
        "jax_vs_f64": compare(jax_run[key], jax64[key], floor).rel_l2,
        "torch_vs_f64": compare(torch_run[key], torch64[key], floor).rel_l2,
        "f64_jax_vs_torch": agreement.rel_l2,
    }
    return columns, agreement


def forward_rows(
    config: ViTConfig, tol: Tolerances, jax_run: RunResult, torch_run: RunResult,
    jax64: RunResult, torch64: RunResult,
) -> list[dict[str, Any]]:
    names = config.layer_names(attention=True)
    torch_inter = torch_run.intermediates
    missing = [n for n in names if n not in jax_run.intermediates or n not in torch_inter]
    if missing:
        raise KeyError(f"canonical layer(s) {missing} missing from a model's intermediates")
    groups = {n: "attention" if n.endswith("attn_probs") else "activations" for n in names}
    floors = _floors({n: torch_inter[n] for n in names}, groups)
    rows = []
    for depth, name in enumerate(names):
        metrics = compare(jax_run.intermediates[name], torch_inter[name], floors[name])
        criterion = tol.logits if name == "logits" else tol.layer
        f64, agreement = _f64_columns(
            name, jax_run.intermediates, torch_inter, jax64.intermediates, torch64.intermediates, floors[name]
        )
        rows.append(_row("forward", name, metrics, criterion, (agreement, tol.float64), depth=depth,
                         group=groups[name], **f64))
    return rows


def _flax_paths_in_model_order(config: ViTConfig) -> list[tuple[str, str]]:
    """(Flax path, torch key it maps to) for every parameter, in the mapping table's order."""
    pairs = []
    for rule in param_rules(config.replace(scan=False)):
        for i, path in enumerate(rule.flax):
            torch_name = rule.torch if len(rule.flax) == 1 else f"{rule.torch}[{'qkv'[i]}]"
            pairs.append((path, torch_name))
    return pairs


def gradient_rows(
    config: ViTConfig, tol: Tolerances, jax_run: RunResult, torch_run: RunResult,
    jax64: RunResult, torch64: RunResult, zero_grad: set[str],
) -> list[dict[str, Any]]:
    pairs = _flax_paths_in_model_order(config)
    floors = _floors({p: torch_run.grads[p] for p, _ in pairs}, {p: "gradients" for p, _ in pairs})
    stem = {path for rule in stem_rules(config) for path in rule.flax} if tol.stem_gradient is not None else set()
    rows = []
    for path, torch_name in pairs:
        metrics = compare(jax_run.grads[path], torch_run.grads[path], floors[path])
        f64, agreement = _f64_columns(path, jax_run.grads, torch_run.grads, jax64.grads, torch64.grads, floors[path])
        criterion = tol.stem_gradient if path in stem else tol.gradient
        criterion, note = (None, ZERO_GRADIENT_NOTE) if path in zero_grad else (criterion, None)
        rows.append(_row("gradients", path, metrics, criterion, (agreement, tol.float64), torch_name=torch_name,
                         note=note, **f64))
    return rows


def zero_gradient_params(config: ViTConfig, grads64: dict[str, np.ndarray]) -> set[str]:
    """Parameters whose exact (float64) gradient is zero up to rounding."""
    paths = [p for p, _ in _flax_paths_in_model_order(config)]
    typical = group_rms(grads64[p] for p in paths)
    return {
        p for p in paths
        if np.linalg.norm(np.asarray(grads64[p], np.float64)) < norm_floor(np.size(grads64[p]), typical, ZERO_GRADIENT_FRACTION)
    }


def update_rows(
    config: ViTConfig, tol: Tolerances, jax_train: TrainResult, torch_train: TrainResult, zero_grad: set[str]
) -> list[dict[str, Any]]:
    pairs = _flax_paths_in_model_order(config)
    jax_p, torch_p = jax_train.params_after_first_step, torch_train.params_after_first_step
    floors = _floors({p: torch_p[p] for p, _ in pairs}, {p: "parameters" for p, _ in pairs})
    rows = []
    for path, torch_name in pairs:
        metrics = compare(jax_p[path], torch_p[path], floors[path])
        criterion, note = (None, ZERO_GRADIENT_NOTE) if path in zero_grad else (tol.update, None)
        rows.append(_row("update", path, metrics, criterion, torch_name=torch_name, note=note))
    return rows


def loss_rows(tol: Tolerances, jax_train: TrainResult, torch_train: TrainResult) -> list[dict[str, Any]]:
    rows = []
    for step, (a, b) in enumerate(zip(jax_train.losses, torch_train.losses), start=1):
        metrics = compare(np.float64(a), np.float64(b))
        rows.append(_row("loss", f"step {step}", metrics, tol.loss, jax=a, torch=b))
    return rows


def verdict(rows: list[dict[str, Any]]) -> tuple[bool, dict[str, Any] | None]:
    """(all judged rows pass, the first failing row in section order)."""
    for section in SECTIONS:
        for row in rows:
            if row["section"] == section and not row["passed"]:
                return False, row
    return True, None
