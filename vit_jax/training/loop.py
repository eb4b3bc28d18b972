"""One run's training and evaluation: the loop over steps, its log, and the closing outputs.

`fit` restores a checkpoint on --resume, compiles the train step (pure, jitted
once, in steps.py) and runs `train_loop`, which owns the I/O: data, logging,
evaluation and checkpoints; `finish` writes the summary and the closing lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Any

import numpy as np

from vit_jax.config import ViTConfig
from vit_jax.data import make_loader, skipped_corrupt_files
from vit_jax.data.preprocess import init_transform
from vit_jax.data.random_erasing import RandomErasing
from vit_jax.formats import training_run
from vit_jax.training import job
from vit_jax.training.config import TrainConfig
from vit_jax.training.export import export_torch
from vit_jax.training.metrics import MetricsWriter, plot_curves
from vit_jax.training.parallel import DataParallel
from vit_jax.training.setup import Run, build_train_step, initial_state


class TrainingStopped(RuntimeError):
    """The run cannot go on (a non-finite loss); the message says where it stopped."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run ended with: the last eval's metrics at `step`, and where its files are."""

    workdir: str
    step: int  # the step the metrics are of: the last trained (or, with eval_only, the evaluated checkpoint)
    metrics: dict[str, float]  # the final eval: accuracy, top5, loss (empty for a dry run)
    best_checkpoint_step: int | None = None
    train_seconds: float = 0.0  # this session's training time (0 for eval_only, a dry run or a complete run)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> path: checkpoints, metrics, ...

    @property
    def eval_accuracy(self) -> float | None:
        return self.metrics.get("accuracy")


# -- evaluation ---------------------------------------------------------------------


def evaluate(eval_step, params, dataset, model: ViTConfig, config: TrainConfig, parallel: DataParallel) -> dict:
    import jax

    loader = make_loader(
        dataset.eval,
        batch_size=parallel.process_eval_batch_size,
        image_size=model.image_hw,
        mean=model.pixel_mean,
        std=model.pixel_std,
        train=False,
        num_epochs=1,
        num_workers=config.num_workers,
        on_corrupt=config.on_corrupt,
        eval_transform=init_transform(config.init, model),  # a timm/transformers --init: its own eval preprocessing
    )
    totals = None
    for batch in loader:
        sums = eval_step(params, parallel.put_batch(batch))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    loader.close()
    sums = parallel.host_metrics(totals)
    count = max(sums.pop("count"), 1.0)
    return {name: value / count for name, value in sums.items()}


def evaluated_params(state):
    """The weights eval uses: the moving average when the run keeps one (--model-ema-decay), else the params."""
    from vit_jax.training.optim import ema_params

    ema = ema_params(state.opt_state)
    return state.params if ema is None else ema


def evaluate_checkpoint(run: Run, eval_step) -> TrainResult:
    """--eval-only: the metrics of one checkpoint (--eval-step, else the best, else the latest intact one)."""
    checkpoints = run.checkpoints
    step, (restored, _) = checkpoints.first_intact(lambda s: (s, checkpoints.restore(s, run.host_state,
                                                                                        run.parallel.state_sharding)),
                                                   run.config.eval_step)
    metrics = evaluate(eval_step, evaluated_params(run.parallel.put_state(restored)), run.dataset, run.model,
                       run.config, run.parallel)
    if run.is_main and run.verbose:
        weights = {"weights": "ema"} if run.config.model_ema_decay > 0 else {}
        print(json.dumps({"step": step, **weights, **{k: round(v, 6) for k, v in metrics.items()}}))
    return TrainResult(run.workdir, step, metrics, checkpoints.best_step(),
                       outputs={"checkpoints": checkpoints.directory})


# -- training -----------------------------------------------------------------------


def make_train_loader(run: Run):
    config = run.config
    return make_loader(
        run.dataset.train,
        batch_size=run.parallel.process_batch_size,
        image_size=run.model.image_hw,
        mean=run.model.pixel_mean,
        std=run.model.pixel_std,
        train=True,
        seed=config.seed,
        num_epochs=None,
        num_workers=config.num_workers,
        augment=config.augment,
        on_corrupt=config.on_corrupt,
        rand_augment=config.aa,
        erasing=RandomErasing(config.reprob, config.remode, config.recount) if config.reprob > 0 else None,
    )


def restore_latest(run: Run, loader) -> tuple[Any, int]:
    """(state, its step) of the newest intact checkpoint, the loader moved to its data position."""
    restored = run.checkpoints.restore_latest(run.host_state, run.parallel.state_sharding)
    if restored is None:  # a run stopped before its first checkpoint: start it over as it started
        # (run.host_state holds only shapes on --resume: never train from it)
        print(f"train.py: no checkpoint yet in {run.checkpoints.directory}; starting the run from step 0 "
              f"(its seeded initialisation, as a fresh run)", file=sys.stderr)
        return initial_state(run), 0
    step, host_state, data_state = restored
    loader.set_state(data_state)
    return host_state, step


def write_run_config(run: Run) -> None:
    import jax

    training_run.write_run_config(
        run.workdir,
        train={**run.config.to_dict(), "workdir": run.workdir},
        model=run.model.to_dict(),
        data=run.dataset.info,
        eval_crop_fraction=run.dataset.eval.defaults.crop_fraction,  # predict applies the same transform
        total_steps=run.total_steps,
        devices=jax.device_count(),
        processes=jax.process_count(),
        mesh=run.parallel.mesh_shape,
        jax_version=jax.__version__,
    )


class TrainLog:
    """Per-step metrics: kept on device until a log step, then checked, averaged and written."""

    def __init__(self, run: Run, start_step: int):
        from tqdm import tqdm

        config = run.config
        self.run = run
        self.announce = config.progress and run.is_main and run.verbose
        self.writer = MetricsWriter(run.workdir, enabled=run.is_main, resume_step=start_step if config.resume else None)
        self.bar = tqdm(total=run.total_steps, initial=start_step, disable=not self.announce,
                        unit="step", dynamic_ncols=True, file=sys.stdout)
        self.pending: list[tuple[int, dict]] = []
        self.window_start = time.perf_counter()

    def add(self, step: int, metrics: dict) -> None:
        self.pending.append((step, metrics))
        self.bar.update(1)

    def flush(self, step: int) -> None:
        """Fetch the pending per-step metrics, stop on a non-finite loss, log the window mean."""
        if not self.pending:
            return
        run = self.run
        fetched = [(s, run.parallel.host_metrics(m)) for s, m in self.pending]
        for s, values in fetched:
            if not math.isfinite(values["loss"]):
                last_good = run.checkpoints.latest_step()
                where = (f"the last good checkpoint is step {last_good} in {run.checkpoints.directory} "
                         f"(continue with --resume --workdir {run.workdir}, e.g. with a lower --lr)"
                         if last_good is not None else "no checkpoint was saved before it")
                raise TrainingStopped(f"loss became {values['loss']} at step {s}; stopped. {where}")
        elapsed = time.perf_counter() - self.window_start
        mean = {k: float(np.mean([v[k] for _, v in fetched])) for k in fetched[0][1]}
        mean["step_time"] = elapsed / len(fetched)
        mean["images_per_sec"] = run.config.batch_size * len(fetched) / elapsed
        self.writer.write(step, "train", mean)
        self.bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}",
                             img_s=f"{mean['images_per_sec']:.0f}", refresh=False)
        self.pending, self.window_start = [], time.perf_counter()

    def eval(self, step: int, metrics: dict, announce: bool) -> None:
        self.writer.write(step, "eval", metrics)
        if announce and self.announce:
            weights = " (EMA weights)" if self.run.config.model_ema_decay > 0 else ""
            self.bar.write(f"step {step}: eval{weights} accuracy {metrics['accuracy']:.4f}  "
                           f"top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}")
        self.window_start = time.perf_counter()  # the eval's time is not a train step's

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


def train_loop(run: Run, state, loader, start_step: int, train_step, eval_step, log: TrainLog):
    """Steps start_step+1 .. total_steps: train, log, evaluate and checkpoint on schedule. (state, last eval)."""
    config, checkpoints = run.config, run.checkpoints
    last_eval: dict[str, float] = {}
    for step in range(start_step + 1, run.total_steps + 1):
        job.agree_to_stop(step - 1)  # every process stops at the same step, whichever got the signal
        checkpoints.poll()  # a background checkpoint write that failed (a full disk) stops the run here
        state, metrics = train_step(state, run.parallel.put_batch(next(loader)))
        log.add(step, metrics)
        last = step == run.total_steps
        do_eval, do_checkpoint = step % run.eval_every == 0 or last, step % run.checkpoint_every == 0 or last
        if step % config.log_every == 0 or do_eval or do_checkpoint:
            log.flush(step)
        if do_eval:
            last_eval = evaluate(eval_step, evaluated_params(state), run.dataset, run.model, config, run.parallel)
            log.eval(step, last_eval, announce=do_checkpoint)
        if do_checkpoint:
            checkpoints.save(step, run.parallel.checkpoint_state(state), loader.get_state(),
                             {"accuracy": last_eval["accuracy"]} if do_eval else None)
    return state, last_eval


def finish(run: Run, state, last_eval: dict, metrics_path: str, wall: float) -> TrainResult:
    """Curves, the optional torch export, summary.json and the closing lines."""
    # Every process takes part in gathering sharded params; only the main one writes.
    final_params = run.parallel.host_state(evaluated_params(state)) if run.config.export_torch else None
    outputs = {"workdir": run.workdir, "checkpoints": run.checkpoints.directory, "metrics": metrics_path}
    result = TrainResult(run.workdir, run.total_steps, last_eval, run.checkpoints.best_step(), wall, outputs)
    if not run.is_main:
        return result
    outputs["curves"] = plot_curves(run.workdir)
    if run.config.export_torch:
        outputs["torch"] = export_torch(final_params, run.model, run.config.export_torch, run.config.overwrite)
    training_run.write_summary(run.workdir, final_step=run.total_steps, eval_metrics=last_eval,
                               best_checkpoint_step=result.best_checkpoint_step, train_seconds=wall,
                               skipped_corrupt_files=skipped_corrupt_files())
    if run.verbose:
        weights = " (EMA weights)" if run.config.model_ema_decay > 0 else ""
        print(f"eval{weights} accuracy {last_eval['accuracy']:.4f} (top-5 {last_eval['top5']:.4f}) after "
              f"{run.total_steps} steps in {wall:.0f} s of training")
        for name, path in outputs.items():
            print(f"{name:12s} {path}")
    return result


def _complete_run(run: Run, start_step: int) -> TrainResult:
    """--resume of a run already at its last step: nothing to train; its saved summary is the result."""
    if run.verbose and run.is_main:
        print(f"train.py: the run in {run.workdir} is complete: its latest checkpoint is step {start_step} and "
              f"it trains for {run.total_steps} steps; nothing to do (pass a larger --steps to train further)")
    summary = training_run.read_summary(run.workdir) or {}
    return TrainResult(run.workdir, start_step, dict(summary.get("eval") or {}), run.checkpoints.best_step(),
                       outputs={"workdir": run.workdir, "checkpoints": run.checkpoints.directory})


def fit(run: Run, eval_step) -> TrainResult:
    """Restore (on --resume), then the loop, then the closing outputs."""
    config = run.config
    loader = make_train_loader(run)
    host_state, start_step = restore_latest(run, loader) if config.resume else (run.host_state, 0)
    if start_step >= run.total_steps:
        loader.close()
        return _complete_run(run, start_step)
    if run.is_main:
        write_run_config(run)
    train_step = build_train_step(run)
    log = TrainLog(run, start_step)
    started = time.perf_counter()
    try:
        state, last_eval = train_loop(run, run.parallel.put_state(host_state), loader, start_step, train_step,
                                      eval_step, log)
    finally:
        log.bar.close()
        loader.close()
    run.checkpoints.wait()
    wall = time.perf_counter() - started
    log.close()
    return finish(run, state, last_eval, log.writer.path, wall)
