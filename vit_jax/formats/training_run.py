"""This project's training run directories: config.json and summary.json written here, and read back as checkpoints.

A run directory holds config.json (the resolved options, the model and the
data, written when training starts), checkpoints/<step> (orbax, written by
vit_jax.training.checkpoint), metrics.jsonl and curves.png
(vit_jax.training.metrics) and summary.json (written when training ends).
Read as a checkpoint, a run gives one saved step's params and the
architecture from config.json.

Accepted paths: a run directory (train.py's --workdir: config.json and
checkpoints/), its checkpoints/ directory, or one step directory
checkpoints/<step>. A directory resolves to the best step by eval accuracy,
else the latest; `step` picks another. A damaged default step is skipped with
a warning for the newest intact one; a damaged step asked for is an error.

Framework-free: a step is orbax's `<step>/state` item (read with tensorstore,
as flax_ckpt reads orbax directories) beside `<step>/metrics/metrics` (JSON).
vit_jax.training.checkpoint writes these and restores whole train states.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.formats.base import ConversionError, TensorSource, write_json_atomic
from vit_jax.formats.flax_ckpt import orbax_arrays
from vit_jax.formats.flax_names import flax_source

FORMAT = "flax"
RUN_CONFIG = "config.json"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
BEST_METRIC = "accuracy"


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint could not be read and an older intact one is used instead."""


def locate(path: str | Path) -> tuple[Path, int | None] | None:
    """(run directory, step the path names or None) if `path` is a run, its checkpoints/ or a step directory."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / RUN_CONFIG).is_file() and (path / CHECKPOINTS).is_dir():
        return path, None
    if path.name == CHECKPOINTS and (path.parent / RUN_CONFIG).is_file():
        return path.parent, None
    if path.name.isdigit() and path.parent.name == CHECKPOINTS and (path.parent.parent / RUN_CONFIG).is_file():
        return path.parent.parent, int(path.name)
    return None


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json (its options and its 'model' section), or one error naming what is wrong."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        raise ConversionError(f"{run_dir} is not a run directory: {RUN_CONFIG} is missing")
    try:
        run = json.loads(path.read_text())
        if not isinstance(run, dict) or not isinstance(run.get("model"), dict):
            raise TypeError("no 'model' section")
    except (OSError, ValueError, TypeError) as e:
        raise ConversionError(f"{path}: not a readable run config with a 'model' section ({e})") from None
    return run


def write_run_config(run_dir: str | Path, *, train: dict[str, Any], model: dict[str, Any], data: dict[str, Any],
                     eval_crop_fraction: float, total_steps: int, devices: int, processes: int, mesh: dict[str, int],
                     jax_version: str) -> None:
    """config.json: what `read_run_config` gives back, and what --resume, predict and --init rebuild the run from.

    `train` is the training options (the "train" section, also a valid --config file); `model` the ViTConfig as a
    dict; `data` what the data source records about itself (class_names: predict's labels); eval_crop_fraction
    the eval transform's crop, which predict applies too.
    """
    write_json_atomic(Path(run_dir) / RUN_CONFIG, {
        "train": {**train, "resume": False, "eval_only": False, "eval_step": None},
        "model": model,
        "data": data,
        "eval_crop_fraction": eval_crop_fraction,
        "seed": train["seed"],
        "total_steps": total_steps,
        "devices": devices,
        "processes": processes,
        "parallel": train["parallel"],
        "mesh": mesh,  # this session's; a resumed run may use another
        "jax_version": jax_version,
    })


def write_summary(run_dir: str | Path, *, final_step: int, eval_metrics: dict[str, float],
                  best_checkpoint_step: int | None, train_seconds: float, skipped_corrupt_files: int) -> None:
    """summary.json, written once the last step is checkpointed: the final eval and where the best step is."""
    write_json_atomic(Path(run_dir) / SUMMARY, {
        "final_step": final_step,
        "eval": eval_metrics,
        "best_checkpoint_step": best_checkpoint_step,
        "train_seconds": train_seconds,
        "skipped_corrupt_files": skipped_corrupt_files,
    })


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A finished run's summary.json, or None when the run has not finished (or the file is unreadable)."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def saved_steps(run_dir: Path, asked: int | None = None) -> dict[int, dict | None]:
    """step -> its eval metrics (None without), for every finished step.

    A step whose metrics file is damaged is left out with a warning (the others still serve), unless it is
    the step asked for: that is an error naming it.
    """
    steps: dict[int, dict | None] = {}
    directory = run_dir / CHECKPOINTS
    for entry in sorted(directory.iterdir()):
        if not (entry.is_dir() and entry.name.isdigit()):
            continue  # orbax's unfinished temporaries are named <step>.orbax-checkpoint-tmp-*
        metrics = entry / "metrics" / "metrics"
        try:
            steps[int(entry.name)] = json.loads(metrics.read_text()) if metrics.is_file() else None
        except (OSError, ValueError) as e:
            damage = f"checkpoint step {entry.name} in {directory} is damaged (its metrics file: {_reason(e)})"
            if int(entry.name) == asked:
                raise ConversionError(damage) from None
            warnings.warn(f"{damage}; using the other steps", DamagedCheckpointWarning, stacklevel=3)
    return steps


def _candidates(run_dir: Path, step: int | None) -> list[int]:
    """Steps to try in order: `step`, else the best by eval accuracy, else the latest; then newer to older."""
    steps = saved_steps(run_dir, step)
    if step is not None and step not in steps:
        raise ConversionError(f"no checkpoint for step {step} in {run_dir / CHECKPOINTS}; saved steps: {sorted(steps)}")
    if not steps:
        raise ConversionError(f"no checkpoint in {run_dir / CHECKPOINTS}")
    scored = [(m[BEST_METRIC], s) for s, m in steps.items() if m and BEST_METRIC in m]
    preferred = step if step is not None else (max(scored)[1] if scored else max(steps))
    return [preferred] + sorted((s for s in steps if s != preferred), reverse=True)


def _read_params(step_dir: Path) -> dict[str, Any]:
    """Every array under 'params/' of a step's train state, read now (so that a damaged step shows here)."""
    arrays = orbax_arrays(step_dir / "state", prefix="params/")
    if not arrays:
        raise ValueError("no params in the saved state")
    return {key[len("params/"):]: np.asarray(array.read().result()) for key, array in arrays.items()}


def read(path: str | Path, step: int | None = None) -> TensorSource:
    found = locate(path)
    if found is None:
        raise ConversionError(f"{path}: not a training run (expected a --workdir with {RUN_CONFIG} and "
                              f"{CHECKPOINTS}/, its {CHECKPOINTS}/ directory, or a step directory in it)")
    run_dir, named_step = found
    if named_step is not None and step is not None and step != named_step:
        raise ConversionError(f"{path} is step {named_step}, but step {step} was asked for")
    asked = named_step if step is None else step
    model = read_run_config(run_dir)["model"]
    directory = run_dir / CHECKPOINTS
    for candidate in _candidates(run_dir, asked):
        try:
            flat = _read_params(directory / str(candidate))
            break
        except Exception as e:  # tensorstore's and JSON's errors: a truncated, missing or emptied step
            reason = _reason(e)
            if asked is not None:
                raise ConversionError(f"checkpoint step {candidate} in {directory} is damaged ({reason})") from None
            warnings.warn(f"checkpoint step {candidate} in {directory} is damaged ({reason}); using the newest "
                          f"intact one instead", DamagedCheckpointWarning, stacklevel=2)
    else:
        raise ConversionError(f"every checkpoint in {directory} is damaged")
    source = flax_source(str(path), FORMAT, {k: v.shape for k, v in flat.items()}, flat.__getitem__, {})
    source.stated = dict(model)
    source.notes.insert(0, f"training run {run_dir}: checkpoint step {candidate}, "
                           f"architecture from {run_dir / RUN_CONFIG}")
    return source
