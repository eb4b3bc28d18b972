"""One run start to end: set up, lock the workdir, train or evaluate, and undo a fresh run that stops too early.

A fresh run stopped before its first checkpoint (an error, Ctrl-C) leaves
nothing behind, so the same command can start again; once a checkpoint
exists, what was written stays for --resume.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import Dataset, reset_skipped_corrupt_files
from vit_jax.training import cli
from vit_jax.training.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from vit_jax.training.config import TrainConfig
from vit_jax.training.loop import TrainResult, evaluate_checkpoint, fit
from vit_jax.training.setup import Run, build_train_step, prepare
from vit_jax.training.workdir_lock import LOCK_FILE, WorkdirLock


def _remove_unfinished(workdir: str, created: bool, before: set[str]) -> None:
    """Undo a fresh run that stopped before its first checkpoint: what it wrote goes, so a new start works."""
    if created:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in set(os.listdir(workdir)) - before:
        path = os.path.join(workdir, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def run(config: TrainConfig, dataset: Dataset | None = None, base_model: ViTConfig | None = None,
        verbose: bool = True, init_weights: tuple[ViTConfig, Any] | None = None) -> TrainResult:
    """Train (or --eval-only, or --dry-run) as `config` says; the other arguments as for `prepare`."""
    reset_skipped_corrupt_files()  # summary.json counts this run's files only
    setup = prepare(config, dataset, base_model, verbose, init_weights)
    if config.dry_run:  # compiles the step on abstract inputs; writes memory.json and nothing else
        from vit_jax.training.dry_run import MEMORY_FILE, dry_run

        dry_run(setup, build_train_step(setup))
        return TrainResult(setup.workdir, 0, {}, outputs={"memory": os.path.join(setup.workdir, MEMORY_FILE)})
    fresh = not (config.resume or config.eval_only)
    created = not os.path.isdir(setup.workdir)
    lock = lock_workdir(setup)
    try:
        return _run_locked(setup, fresh, created)
    finally:
        if lock is not None:
            lock.release()


def lock_workdir(setup: Run) -> WorkdirLock | None:
    """Process 0 of a writing run owns the workdir for the run's length (--eval-only only reads it)."""
    if setup.config.eval_only or not setup.is_main:
        return None
    try:
        os.makedirs(setup.workdir, exist_ok=True)
        return WorkdirLock(setup.workdir).acquire()
    except OSError as error:
        raise ConfigError(f"--workdir {setup.workdir}: cannot write there ({error.strerror}); training needs a "
                          f"writable run directory (--eval-only and predict only read one)") from None


def _run_locked(setup: Run, fresh: bool, created: bool) -> TrainResult:
    from vit_jax.model import VisionTransformer

    config, workdir = setup.config, setup.workdir
    os.makedirs(workdir, exist_ok=True)
    before = set(os.listdir(workdir)) | {LOCK_FILE}  # the lock goes when it is released

    def unfinished() -> bool:
        return fresh and setup.is_main and (setup.checkpoints is None or setup.checkpoints.latest_step() is None)

    forget = cli.on_forced_exit(lambda: unfinished() and _remove_unfinished(workdir, created, before))
    try:
        setup.checkpoints = Checkpointer(workdir, keep=config.keep_checkpoints, read_only=config.eval_only)
        eval_step = setup.parallel.compile_eval_step(VisionTransformer(setup.model).apply)
        return evaluate_checkpoint(setup, eval_step) if config.eval_only else fit(setup, eval_step)
    except CheckpointWriteError as error:  # the run so far stays: --resume continues it once there is space
        raise CheckpointError(f"{error}; free space, then continue with --resume --workdir {workdir}") from None
    except BaseException:
        if unfinished():
            _remove_unfinished(workdir, created, before)
        raise
    finally:
        forget()
        if setup.checkpoints is not None:
            try:
                setup.checkpoints.close()
            except Exception:
                if not cli.interrupted():
                    raise
