"""Training as a library: `train(...)` runs what `python train.py` runs, from Python.

    from vit_jax.training import train
    result = train(model=my_vit_config, train_data=(images, labels), steps=200, verbose=False)

Modules: config (the options), setup (checks and builds a run), loop (train
and evaluate), runner (one run with its lock and cleanup), api (`train`),
in_memory (a caller's arrays as a dataset), and below them optim, state,
steps, parallel, mesh, checkpoint, metrics, export, dry_run, workdir_lock, cli.
Names are imported on first use, so that `from vit_jax.training import cli`
(first thing in a command) does not pay for JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "vit_jax.training.api": ("TRAINING_ERRORS", "train"),
    "vit_jax.training.loop": ("TrainResult", "TrainingStopped"),
    "vit_jax.training.config": ("TrainConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from vit_jax.training.api import TRAINING_ERRORS, train  # noqa: F401
    from vit_jax.training.config import TrainConfig  # noqa: F401
    from vit_jax.training.loop import TrainingStopped, TrainResult  # noqa: F401


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'vit_jax.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
