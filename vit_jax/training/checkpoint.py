"""Orbax checkpoints of a training run: the state, the data position, the eval metrics.

Layout: `<workdir>/checkpoints/<step>/{state,data}` where `state` is the
TrainState (params, optimizer state, step, RNG) and `data` the JSON state of
every process's data iterator. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoints intact; the half-written temporary is removed when a
resumed run next saves.

Kept: the last `keep` checkpoints plus the one with the best eval accuracy.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vit_jax.training.state import TrainState

BEST_METRIC = "accuracy"

# Orbax warns "Given directory is read only" whenever a manager is opened read-only, which is
# exactly what evaluation and predict ask for; drop that one message and keep every other.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Given directory is read only"))


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def _gather_process_json(value: Any) -> list[Any]:
    """The JSON-serialisable `value` of every process, in process order."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([encoded.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, np.ravel(lengths))]


class Checkpointer:
    """Saves and restores training checkpoints under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=0 if read_only else 1,
            preservation_policy=policy,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            best_fn=lambda metrics: metrics[BEST_METRIC],
            best_mode="max",
            keep_checkpoints_without_metrics=True,
        )
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoints found: {self.directory} does not exist")
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The saved step with the highest eval accuracy (None if no step has metrics)."""
        best, best_value = None, -np.inf
        for step in self.manager.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and metrics.get(BEST_METRIC, -np.inf) > best_value:
                best, best_value = step, metrics[BEST_METRIC]
        return best

    def save(self, step: int, host_state: TrainState, data_state: Any, metrics: dict[str, float] | None = None) -> None:
        """Start writing checkpoint `step` (asynchronously; `wait` blocks until it is on disk).

        `host_state` is one NumPy copy of the replicated state; every process
        must call this (the data iterators' states are gathered to process 0).
        """
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state),
                data=ocp.args.JsonSave({"processes": _gather_process_json(data_state)}),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, template: TrainState) -> tuple[TrainState, Any]:
        """Checkpoint `step` as (NumPy TrainState shaped like `template`, this process's data state)."""
        if step not in self.manager.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; saved steps: {list(self.manager.all_steps())}"
            )
        abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.asarray(x).dtype), template)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()),
        )
        processes = restored.data["processes"]
        if len(processes) != jax.process_count():
            raise CheckpointError(
                f"checkpoint {step} was written by {len(processes)} process(es), this run has {jax.process_count()}; "
                "resume with the same number of processes"
            )
        state = jax.tree.map(np.asarray, restored.state)
        return state, processes[jax.process_index()]

    def restore_params(self, step: int | None = None) -> tuple[int, Any]:
        """(step, params as NumPy) of checkpoint `step` (default: the best, else the latest)."""
        step = step if step is not None else (self.best_step() or self.latest_step())
        if step is None or step not in self.manager.all_steps():
            raise CheckpointError(
                f"no checkpoint {'' if step is None else f'for step {step} '}in {self.directory}; "
                f"saved steps: {list(self.manager.all_steps())}"
            )
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return step, jax.tree.map(np.asarray, restored.state["params"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
