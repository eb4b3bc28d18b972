"""This project's training runs read as checkpoints: one saved step's params, the architecture from config.json.

Accepted paths: a run directory (train.py's --workdir: config.json and
checkpoints/), its checkpoints/ directory, or one step directory
checkpoints/<step>. A directory resolves to the best step by eval accuracy,
else the latest; `step` picks another. A damaged default step is skipped with
a warning for the newest intact one; a damaged step asked for is an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from parity.formats.base import ConversionError, TensorSource
from parity.formats.flax_names import flax_source

FORMAT = "flax"
RUN_CONFIG = "config.json"  # vit_jax.training.config.RUN_CONFIG_FILE, without importing the training stack
CHECKPOINTS = "checkpoints"


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


def read(path: str | Path, step: int | None = None) -> TensorSource:
    from parity.mapping import flatten
    from vit_jax.training.checkpoint import CheckpointError, Checkpointer

    found = locate(path)
    if found is None:
        raise ConversionError(f"{path}: not a training run (expected a --workdir with {RUN_CONFIG} and "
                              f"{CHECKPOINTS}/, its {CHECKPOINTS}/ directory, or a step directory in it)")
    run_dir, named_step = found
    if named_step is not None and step is not None and step != named_step:
        raise ConversionError(f"{path} is step {named_step}, but step {step} was asked for")
    step = named_step if step is None else step
    config_path = run_dir / RUN_CONFIG
    try:
        model = json.loads(config_path.read_text())["model"]
        if not isinstance(model, dict):
            raise TypeError(f"'model' is a {type(model).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{config_path}: not a readable run config with a 'model' section ({e})") from None
    try:
        checkpoints = Checkpointer(str(run_dir), read_only=True)
        try:
            step, params = checkpoints.restore_params(step)
        finally:
            checkpoints.close()
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    flat = flatten(params)
    source = flax_source(str(path), FORMAT, {k: v.shape for k, v in flat.items()}, flat.__getitem__, {})
    source.stated = dict(model)
    source.notes.insert(0, f"training run {run_dir}: checkpoint step {step}, architecture from {config_path}")
    return source
