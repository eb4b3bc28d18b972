"""`train(...)`: the training command as a Python function, with a caller's own model config and data.

    from vit_jax.training import train
    result = train(steps=300)                                  # the default digits run, like `python train.py`
    result = train(model=ViTConfig(...), train_data=(images, labels), eval_data=(x, y), steps=100, verbose=False)
    result.eval_accuracy, result.step, result.workdir, result.metrics

Keywords are the command's flags with underscores (`batch_size=256` for
--batch-size); bad options raise one of TRAINING_ERRORS with the message
the command prints, and nothing exits the process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import DataError
from vit_jax.training.checkpoint import CheckpointError
from vit_jax.training.config import RUN_CONFIG_FILE, TrainConfig, config_from_dict, load_config_file
from vit_jax.training.in_memory import in_memory_dataset
from vit_jax.training.loop import TrainingStopped, TrainResult
from vit_jax.training.parallel import ParallelError
from vit_jax.training.runner import run
from vit_jax.training.workdir_lock import WorkdirBusy

# What a run raises for bad options, data or run directories, and a run that cannot go on.
TRAINING_ERRORS = (ConfigError, DataError, ParallelError, CheckpointError, TrainingStopped, WorkdirBusy)

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _expected_kind(f: dataclasses.Field) -> type | None:
    declared = f.metadata.get("type")
    kind = declared if isinstance(declared, type) else (type(f.default) if f.default is not None else str)
    return None if f.name == "resnet_layers" else kind


def _check_option(name: str, value: Any) -> Any:
    """`value` as TrainConfig stores it (paths as str), or ConfigError naming the option and the type expected."""
    f = _FIELDS[name]
    if value is None and f.default is None:
        return None
    kind = _expected_kind(f)
    if name == "resnet_layers":
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value)
        expected = "a tuple of unit counts per stage, such as (3, 4, 9)"
    elif kind is bool:
        ok, expected = isinstance(value, (bool, np.bool_)), "True or False"
    elif kind is int:
        ok, expected = isinstance(value, (int, np.integer)) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok, expected = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool), \
            "a number"
    elif name == "init" and isinstance(value, tuple):  # (ViTConfig, params) held in memory: see _weights_in_memory
        ok, expected = True, ""
    else:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        ok, expected = isinstance(value, str), "a string"
    if not ok:
        raise ConfigError(f"{name}={value!r}: expected {expected}")
    return bool(value) if kind is bool else value


def _base_file(config: str | os.PathLike | None, options: dict[str, Any]) -> str | None:
    """--config's file; on resume or eval_only without one, the run's own config.json (as the command does)."""
    if config is not None:
        return os.fspath(config)
    workdir = options.get("workdir")
    if (options.get("resume") or options.get("eval_only")) and workdir is not None:
        saved = os.path.join(os.fspath(workdir), RUN_CONFIG_FILE)
        return saved if os.path.exists(saved) else None
    return None


def _options(model: str | ViTConfig | None, base: str | None, options: dict[str, Any],
             in_memory_data: bool) -> dict[str, Any]:
    """TrainConfig's values: the base file's, then the keywords; a ViTConfig's name, channels and dtype."""
    unknown = sorted(set(options) - set(_FIELDS))
    if unknown:
        config_from_dict({name: options[name] for name in unknown}, source="train()")  # names the close matches
    values = load_config_file(base, in_memory_data) if base is not None else {}
    values.update({name: _check_option(name, value) for name, value in options.items()})
    weights = values.get("init")
    if isinstance(weights, tuple) and weights and isinstance(weights[0], ViTConfig):  # the weights' own channels
        values.setdefault("channels", weights[0].num_channels)
    if isinstance(model, ViTConfig):
        values["model"] = model.name
        values.setdefault("channels", model.num_channels)
        if model.dtype in _FIELDS["dtype"].metadata["choices"]:
            values.setdefault("dtype", model.dtype)
    elif isinstance(model, str):
        values["model"] = model
    elif model is not None:
        raise ConfigError(f"model={model!r}: expected a preset name or a ViTConfig")
    return values


def train(*, model: str | ViTConfig | None = None, train_data: Any = None, eval_data: Any = None,
          config: str | os.PathLike | None = None, verbose: bool = True, **options: Any) -> TrainResult:
    """Train (or evaluate, resume, dry-run) as `python train.py` would with the same options; the TrainResult.

    model: a preset name (as --model; default ViT-digits, or a resumed run's own) or a ViTConfig, whose head is
    sized to the data's classes and which flags such as `hidden_size=` still override.
    train_data / eval_data: (images, labels) arrays, or record sources the loader reads (see
    vit_jax.training.in_memory), in place of `dataset=`; without eval_data a stratified `split_fraction` of
    train_data is held out.
    config: a --config JSON file, which the keywords override (on resume or eval_only, the run's config.json).
    init: a checkpoint or run directory to fine-tune from, as --init, or a (ViTConfig, params) pair held in
    memory (as vit_jax.load_pretrained returns), resized and re-headed the same way.
    verbose=False prints nothing (no progress bar, eval lines or closing summary); warnings still go through
    `warnings`. Raises one of TRAINING_ERRORS on bad options, data or run directories.
    """
    base = _base_file(config, options)
    values = _options(model, base, options, in_memory_data=train_data is not None)
    dataset = None
    if train_data is not None:
        named = [name for name in ("dataset", "data_path", "val_path") if name in options]
        if named:
            raise ConfigError(f"train_data replaces {named[0]}=; pass one or the other")
        dataset = in_memory_dataset(train_data, eval_data, values.get("channels", 3),
                                    values.get("split_fraction", 0.2), values.get("split_seed", 0))
    elif eval_data is not None:
        raise ConfigError("eval_data needs train_data (the training examples it is held out from)")
    init_weights = _weights_in_memory(values)
    if not verbose:
        values["progress"] = False
    train_config: TrainConfig = config_from_dict(values, source=base or "train()")
    return run(train_config, dataset, model if isinstance(model, ViTConfig) else None, verbose, init_weights)


def _weights_in_memory(values: dict[str, Any]) -> tuple[ViTConfig, Any] | None:
    """init=(ViTConfig, params), as vit_jax.load_pretrained returns them: taken out of `values`, whose init then
    names them for config.json."""
    init = values.get("init")
    if not isinstance(init, tuple):
        return None
    if len(init) != 2 or not isinstance(init[0], ViTConfig) or not isinstance(init[1], Mapping):
        raise ConfigError("init=: expected a checkpoint path or a (ViTConfig, params) pair")
    values["init"] = f"<{init[0].name} params passed to train()>"
    return init
