"""Orbax checkpoints of a training run: the state, the data position, the eval metrics.

Layout: `<workdir>/checkpoints/<step>/{state,data}` where `state` is the
TrainState (params, optimizer state, step, RNG) and `data` the JSON state of
every process's data iterator. Orbax writes each step into a temporary
directory and renames it when complete, so a run killed mid-write leaves the
previous checkpoints intact; the half-written temporary is removed when a
resumed run next saves.

Kept: the last `keep` checkpoints plus the one with the best eval accuracy.

A damaged checkpoint (a file of it truncated or missing) is named in a
warning and the newest intact one is used instead, unless the caller asked
for that step by number. A run that writes (`--resume`) moves damaged steps
to `<workdir>/damaged_checkpoints/` so that it can save those steps again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from vit_jax.formats.training_run import BEST_METRIC, CHECKPOINTS, DamagedCheckpointWarning
from vit_jax.training.orbax_output import quiet_failures
from vit_jax.training.state import TrainState

DAMAGED_DIR = "damaged_checkpoints"
T = TypeVar("T")

# Orbax warns "Given directory is read only" whenever a manager is opened read-only, which is
# exactly what evaluation and predict ask for; drop that one message and keep every other.
logging.getLogger("absl").addFilter(lambda record: not record.getMessage().startswith("Given directory is read only"))


class CheckpointError(RuntimeError):
    """A missing or unreadable checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk); the steps saved before it are intact."""


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _write_failure(error: BaseException) -> str:
    """The OS's words for a failed write ('No space left on device'), else the error's first line."""
    found = re.findall(r"([^:\]\[]+) \[os_error_code='(\d+)'\]", str(error))
    if found:
        return f"{found[-1][0].strip()} (errno {found[-1][1]})"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})"
    return _reason(error)


def _unreadable_metrics(directory: str) -> dict[int, str]:
    """Steps whose metrics file is not JSON (orbax cannot even list the checkpoints then), with the reason."""
    damaged = {}
    if not os.path.isdir(directory):
        return damaged
    for name in os.listdir(directory):
        path = os.path.join(directory, name, "metrics", "metrics")
        if name.isdigit() and os.path.isfile(path):
            try:
                with open(path) as f:
                    json.load(f)
            except (OSError, ValueError) as error:
                damaged[int(name)] = _reason(error)
    return damaged


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


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


class _SkippingNameFormat(ocp.path.step.NameFormat):
    """Orbax's standard step names, with some steps not there (damaged ones a read-only reader cannot move)."""

    def __init__(self, skip: set[int]):
        self.inner, self.skip = ocp.path.step.standard_name_format(), skip

    def build_name(self, step: int) -> str:
        return self.inner.build_name(step)

    def find_all(self, base_path):
        return [found for found in self.inner.find_all(base_path) if found.step not in self.skip]

    def find_step(self, base_path, step: int):
        if step in self.skip:
            raise ValueError(f"checkpoint step {step} is damaged")
        return self.inner.find_step(base_path, step)


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
        self.read_only = read_only
        self.damaged: dict[int, str] = {}  # read-only: steps hidden from orbax, which cannot list them
        for step, reason in sorted(_unreadable_metrics(self.directory).items()):
            if read_only:
                self.damaged[step] = f"its metrics file: {reason}"
                warnings.warn(f"checkpoint step {step} in {self.directory} is damaged (its metrics file: {reason}); "
                              f"using the other steps", DamagedCheckpointWarning, stacklevel=2)
            else:
                self._set_aside(step, f"its metrics file: {reason}")
        if self.damaged:
            options = dataclasses.replace(options, step_name_format=_SkippingNameFormat(set(self.damaged)))
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=options)
        self._pending: contextlib.ExitStack | None = None  # a write in progress, with orbax's output held back
        self._pending_step: int | None = None
        self.failed = False

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The saved step with the highest eval accuracy (None if no step has metrics)."""
        best, best_value = None, -np.inf
        for step in self.manager.all_steps():
            try:
                metrics = self.manager.metrics(step)
            except Exception:  # damaged: restoring it will say so
                continue
            if metrics and metrics.get(BEST_METRIC, -np.inf) > best_value:
                best, best_value = step, metrics[BEST_METRIC]
        return best

    def save(self, step: int, host_state: TrainState, data_state: Any, metrics: dict[str, float] | None = None) -> None:
        """Start writing checkpoint `step` (asynchronously; `wait` blocks until it is on disk).

        `host_state` is the state as device arrays (each process writes the
        shards it holds, none is gathered) or one NumPy copy; every process
        must call this (the data iterators' states are gathered to process 0).
        A failed write (here or in the background) raises CheckpointWriteError,
        at the latest from the next `save`, `poll` or `wait`; orbax's own
        output about it (a traceback per thread) is held back until then.
        """
        self._finish_pending()
        self._pending = contextlib.ExitStack()
        self._pending.enter_context(quiet_failures())
        self._pending_step = step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(host_state),
                    data=ocp.args.JsonSave({"processes": _gather_process_json(data_state)}),
                ),
                metrics=metrics,
                force=True,
            )
        except Exception as error:
            self._fail(error)

    def poll(self) -> None:
        """Cheap: once the background write is over, show what orbax printed, or raise CheckpointWriteError."""
        if self._pending is not None and not self.manager.is_saving_in_progress():
            self._finish_pending()

    def _finish_pending(self) -> None:
        if self._pending is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            self._fail(error)
        pending, self._pending = self._pending, None
        pending.close()

    def _fail(self, error: BaseException) -> None:
        pending, self._pending = self._pending, None
        self.failed = True
        pending.__exit__(type(error), error, error.__traceback__)  # drops orbax's held output
        saved = [s for s in self.steps() if s != self._pending_step]
        last = (f"the last saved step, {max(saved)}, is intact" if saved else "no step was saved before it")
        raise CheckpointWriteError(f"cannot write checkpoint step {self._pending_step} in {self.directory} "
                                   f"({_write_failure(error)}); {last}") from None

    def restore(self, step: int, template: TrainState, shardings: Any = None) -> tuple[TrainState, Any]:
        """Checkpoint `step` as (TrainState shaped like `template`, this process's data state).

        With `shardings` (a NamedSharding per leaf) the state comes back as
        device arrays placed so, each process reading only its shards, whatever
        mesh or device count wrote it; without, as NumPy.
        """
        self._check_saved(step)
        if shardings is None:
            abstract = jax.tree.map(lambda x: np.zeros(np.shape(x), np.dtype(x.dtype)), template)
        else:
            abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                                    template, shardings)
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
        state = restored.state if shardings is not None else jax.tree.map(np.asarray, restored.state)
        return state, processes[jax.process_index()]

    def restore_params(self, step: int | None = None) -> tuple[int, Any]:
        """(step, params as NumPy) of checkpoint `step` (default: the best, else the latest, else older intact ones)."""
        return self.first_intact(self._params, step)

    def restore_latest(self, template: TrainState, shardings: Any = None) -> tuple[int, TrainState, Any] | None:
        """(step, state, data state) of the newest intact checkpoint, or None when there is none at all."""
        if self.latest_step() is None:
            return None
        return self.first_intact(lambda step: (step, *self.restore(step, template, shardings)), prefer_latest=True)

    def first_intact(self, load: Callable[[int], T], step: int | None = None, prefer_latest: bool = False) -> T:
        """`load(s)` for the first step s that reads back: `step`, else the best (or latest), then newer to older.

        A damaged step is named in a warning and skipped; a damaged `step`
        (asked for by number) is an error instead. A writable checkpointer
        moves damaged steps aside so the run can save those steps again.
        """
        if step is not None:
            self._check_saved(step)
        best = None if prefer_latest else self.best_step()
        preferred = step if step is not None else (best or self.latest_step())
        if preferred is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        candidates = [preferred] + sorted((s for s in self.steps() if s != preferred), reverse=True)
        damaged = []
        for candidate in candidates:
            try:
                with quiet_failures():
                    return load(candidate)
            except CheckpointError:
                raise
            except Exception as error:
                reason = _reason(error)
                if step is not None:
                    raise CheckpointError(f"checkpoint step {candidate} in {self.directory} is damaged ({reason}); "
                                          f"saved steps: {self.steps()}") from None
                damaged.append(candidate)
                warnings.warn(f"checkpoint step {candidate} in {self.directory} is damaged ({reason}); "
                              f"using the newest intact one instead", DamagedCheckpointWarning, stacklevel=2)
                if not self.read_only:
                    self._set_aside(candidate, reason)
                    self.manager.reload()
        raise CheckpointError(f"every checkpoint in {self.directory} is damaged (steps {damaged})")

    def _params(self, step: int) -> tuple[int, Any]:
        """The params alone, read onto this process's first device whatever mesh or device count wrote them."""
        saved = ocp.PyTreeCheckpointHandler().metadata(Path(self.directory) / str(step) / "state").tree
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                                       saved["params"])}
        restore = ocp.args.PyTreeRestore(item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                         partial_restore=True)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=restore))
        return step, jax.tree.map(np.asarray, restored.state["params"])

    def _check_saved(self, step: int) -> None:
        if step in self.damaged:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is damaged ({self.damaged[step]}); "
                                  f"intact steps: {self.steps()}")
        if step not in self.steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; saved steps: {self.steps()}")

    def _set_aside(self, step: int, reason: str) -> None:
        """Move damaged step `step` to <workdir>/damaged_checkpoints/ (kept for inspection, out of orbax's way)."""
        if jax.process_index() != 0:  # one process moves it; the others' restores fail on it alike
            return
        aside = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
        os.makedirs(aside, exist_ok=True)
        target = os.path.join(aside, str(step))
        suffix = 1
        while os.path.exists(target):
            target, suffix = os.path.join(aside, f"{step}.{suffix}"), suffix + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
        warnings.warn(f"checkpoint step {step} is damaged ({reason}); moved it to {target}", DamagedCheckpointWarning,
                      stacklevel=3)

    def wait(self) -> None:
        self._finish_pending()

    def close(self) -> None:
        """Finish the pending write (raising CheckpointWriteError if it failed) and release orbax."""
        try:
            self._finish_pending()
        finally:
            if self.failed:  # orbax re-raises the failed write: said once already
                with contextlib.suppress(Exception), quiet_failures():
                    self.manager.close()
            else:
                self.manager.close()
