"""Train or fine-tune a Vision Transformer with optax under jit, one device to many hosts.

    python train.py                       # small ViT from scratch on scikit-learn's digits
    python train.py --help                # every option
    python train.py --dataset folder --data-path ~/flowers --init ViT-B_16.npz \\
        --model B/16 --image-size 224 --lr 3e-3 --batch-size 512 --steps 2000
    python train.py --resume --workdir runs/NAME
    python train.py --eval-only --workdir runs/NAME
    python train.py predict --checkpoint runs/NAME image.png ...

Reads top to bottom: `prepare` checks the inputs and creates the model and
optimizer state (writing nothing); `evaluate` runs the eval step; `train`
restores a checkpoint, compiles the train step (pure, jitted once, in
vit_jax/training/steps.py) and runs `train_loop`, which owns the I/O: data,
logging, evaluation and checkpoints; `finish` writes the summary. `run` ties
them together and undoes a fresh run that stops before its first checkpoint.

Ctrl-C, SIGTERM, SIGHUP or SIGQUIT end the run within seconds with exit status 128 + the signal (130, 143, 129, 131);
checkpoints already written stay, so `--resume` continues from the last one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
import warnings
from typing import Any

if __name__ == "__main__":  # first, so that Ctrl-C during the imports below already ends the run cleanly
    from vit_jax.training import cli

    cli.install("train.py")

import numpy as np

from vit_jax.config import ARCHITECTURE_FIELDS, ConfigError, ViTConfig
from vit_jax.cpu import onednn as cpu_matmuls
from vit_jax.data import (
    DataError,
    DatasetSpec,
    load_dataset,
    make_loader,
    reset_skipped_corrupt_files,
    skipped_corrupt_files,
)
from vit_jax.formats import ConversionError, training_run
from vit_jax.formats.base import write_json_atomic
from vit_jax.kernels import resolve_kernels
from vit_jax.training import cli, job
from vit_jax.training.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from vit_jax.training.config import (
    MODEL_OVERRIDES,
    RUN_CONFIG_FILE,
    TrainConfig,
    apply_model_overrides,
    parse_args,
    resolve_model_config,
)
from vit_jax.training.mesh import parse_mesh
from vit_jax.training.metrics import MetricsWriter, plot_curves
from vit_jax.training.parallel import DataParallel, ParallelError, initialize_distributed
from vit_jax.training.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock, probe


class TrainingStopped(RuntimeError):
    """The run cannot go on (a non-finite loss); the message says where it stopped."""


# -- setup ------------------------------------------------------------------------


def load_data(config: TrainConfig):
    spec = DatasetSpec(
        kind=config.dataset,
        path=config.data_path,
        val_path=config.val_path,
        split_fraction=config.split_fraction,
        split_seed=config.split_seed,
        channels=config.channels,
    )
    return load_dataset(spec)


def warn_about_data(config: TrainConfig, dataset) -> None:
    """Inputs that train without error but cannot give a meaningful run."""
    classes = np.unique(dataset.train.labels)
    if len(classes) < 2:
        warnings.warn(f"the training data has a single class ({len(dataset.train)} examples of label "
                      f"{int(classes[0])}): accuracy will be 1.0 and the loss near 0 whatever the model learns")
    if config.batch_size > len(dataset.train):
        warnings.warn(f"--batch-size {config.batch_size} is larger than the training set ({len(dataset.train)} "
                      f"examples): every batch repeats examples")


def check_same_model(config: TrainConfig, saved: dict, workdir: str) -> None:
    """--resume / --eval-only keep the run's model: a model flag that differs from it is an error."""
    model = ViTConfig.from_dict(saved["model"])
    where = os.path.join(workdir, RUN_CONFIG_FILE)
    keep = "a resumed or evaluated run keeps its model; drop the flag or start a new --workdir"
    saved_preset = saved.get("train", {}).get("model")
    if saved_preset is not None and config.model != saved_preset:
        raise ConfigError(f"--model {config.model} differs from the run's model {saved_preset} ({where}); {keep}")
    requested = {name: getattr(config, name) for name in MODEL_OVERRIDES if getattr(config, name) is not None}
    requested.update(num_channels=config.channels, dtype=config.dtype)
    for name, value in requested.items():
        try:
            differs = getattr(model.replace(**{name: value}), name) != getattr(model, name)
        except ConfigError:
            differs = True
        if differs:
            flag = "--channels" if name == "num_channels" else "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {value} differs from the run's {name} {getattr(model, name)} ({where}); {keep}")


def create_model(config: TrainConfig, num_classes: int, saved_model: dict | None,
                 parallel: DataParallel | None = None):
    """(ViTConfig, initial params or None when a checkpoint will supply them; shapes only for --dry-run).

    `parallel`'s mesh is checked against the model (heads, MLP width) before anything compiles.
    """
    import jax

    from vit_jax import init_params, param_shapes

    def check(model: ViTConfig) -> None:
        if parallel is not None:
            parallel.check_model(model.num_heads, model.mlp_dim)

    if saved_model is not None:  # resume / eval-only: the run's own architecture; kernels as this run asks
        kernels = resolve_kernels(config.kernels)
        model = ViTConfig.from_dict(saved_model)
        check(model)
        return model.replace(kernels=kernels, recompute_gelu=model.recompute_gelu and kernels == "cpu"), None
    if config.init is None:
        model = resolve_model_config(config, num_classes)
        check(model)
        return model, param_shapes(model) if config.dry_run else jax.device_get(init_params(model, config.seed))
    from vit_jax.formats import ConversionError  # imports torch: only when fine-tuning
    from vit_jax.pretrained import load_pretrained

    try:
        pretrained, params = load_pretrained(config.init, image_size=config.image_size, num_classes=num_classes,
                                             step=config.init_step, allow_nonfinite=config.allow_nonfinite_init)
    except ConversionError as error:  # (the converter's flag is --allow-nonfinite; here it has a name of its own)
        message = str(error).replace("--allow-nonfinite", "--allow-nonfinite-init")
        raise ConfigError(f"--init {config.init}: {message}") from None
    # Architecture comes from the checkpoint (resized and re-headed on request); flags may change numerics and
    # runtime options only.
    fixed = [f for f in ARCHITECTURE_FIELDS if f not in ("image_size", "num_classes") and hasattr(config, f)]
    changed = [f for f in fixed if getattr(config, f) is not None and getattr(config, f) != getattr(pretrained, f)]
    if changed:
        raise ConfigError(f"--{changed[0].replace('_', '-')} differs from the --init checkpoint's architecture")
    if config.channels != pretrained.num_channels:
        raise ConfigError(f"--channels {config.channels}: the --init checkpoint takes {pretrained.num_channels}")
    model = apply_model_overrides(pretrained, dataclasses.replace(config, image_size=None), num_classes)
    check(model)
    from vit_jax import to_layout

    return model, to_layout(params, model)


def create_optimizer(config: TrainConfig, params: Any, total_steps: int):
    from vit_jax.training import optim

    schedule = optim.learning_rate_schedule(
        config.lr, total_steps, config.warmup_steps, config.schedule, config.end_lr_factor
    )
    tx = optim.make_optimizer(
        params,
        name=config.optimizer,
        schedule=schedule,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        b1=config.b1,
        b2=config.b2,
        momentum=config.momentum,
        nesterov=config.nesterov,
        freeze_backbone=config.freeze_backbone,
    )
    return tx, schedule


def default_workdir(config: TrainConfig) -> str:
    return os.path.join("runs", f"{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def read_run_config(workdir: str) -> dict:
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir} is not a run directory: {RUN_CONFIG_FILE} is missing (a run stopped "
                              f"before writing it has nothing to resume: start it again without --resume)")
    try:
        return training_run.read_run_config(workdir)
    except ConversionError as error:
        raise CheckpointError(str(error)) from None


def check_workdir_path(workdir: str) -> None:
    """The run directory is a directory, or can be created (no regular file on the way to it)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file; expected a run directory (or a path to create one)")
    parent = os.path.dirname(workdir)
    while not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir {workdir}: {parent} is a file, not a directory; expected a path whose "
                          f"existing parent is a directory")


def is_unused_workdir(workdir: str) -> bool:
    """Nothing here but what a run killed before writing its config leaves: a lock file, an empty checkpoints/."""
    names = set(os.listdir(workdir)) - {LOCK_FILE}
    checkpoints = os.path.join(workdir, "checkpoints")
    return not names or (names == {"checkpoints"} and os.path.isdir(checkpoints) and not os.listdir(checkpoints))


@dataclasses.dataclass
class Run:
    """What every phase of one run reads: its inputs, model, optimizer and schedule of steps."""

    config: TrainConfig
    workdir: str
    dataset: Any
    model: ViTConfig
    parallel: DataParallel
    tx: Any
    schedule: Any
    host_state: Any  # the initial TrainState as NumPy (zeros, for shapes only, on --resume and --eval-only)
    total_steps: int
    eval_every: int
    checkpoint_every: int
    is_main: bool
    checkpoints: Checkpointer | None = None


def prepare(config: TrainConfig) -> Run:
    """Everything that can reject the inputs, before anything is written."""
    try:
        cpu_matmuls.select(config.cpu_matmuls)  # XLA_FLAGS: before the backend starts
    except RuntimeError as error:
        raise ConfigError(str(error)) from None
    initialize_distributed(config.coordinator_address, config.num_processes, config.process_id,
                           config.coordination_timeout, config.workdir)
    import jax

    from vit_jax import param_shapes
    from vit_jax.training.state import create_train_state

    if config.workdir is None and jax.process_count() > 1:
        raise ConfigError("a multi-process run needs --workdir (a directory every process can reach)")
    workdir = os.path.abspath(config.workdir or default_workdir(config))
    check_workdir_path(workdir)
    if config.export_torch:  # refused now, not after the training
        from vit_jax.formats.base import ConversionError, check_output_path

        try:
            check_output_path(config.export_torch, overwrite=config.overwrite)
        except ConversionError as error:
            raise ConfigError(f"--export-torch {error}") from None
    if jax.process_index() == 0 and not config.eval_only and os.path.isdir(workdir):
        probe(workdir)
    saved = None
    if config.resume or config.eval_only:
        saved = read_run_config(workdir)
        check_same_model(config, saved, workdir)
    elif os.path.isdir(workdir) and not is_unused_workdir(workdir) and not config.dry_run:  # dry: memory.json only
        raise ConfigError(f"--workdir {workdir} already holds files; pass --resume to continue that run or "
                          "choose another")

    parallel = DataParallel(config.parallel, config.batch_size, config.global_eval_batch_size, config.accum_steps,
                            parse_mesh(config.mesh))
    dataset = load_data(config)
    warn_about_data(config, dataset)
    model, params = create_model(config, dataset.num_classes, saved and saved["model"], parallel)
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(dataset.train) / config.batch_size))
    steps_per_epoch = max(1, len(dataset.train) // config.batch_size)
    eval_every = config.eval_every or steps_per_epoch
    # About ten checkpoints per run by default, each at an eval step so "best" is known.
    checkpoint_every = config.checkpoint_every or eval_every * max(1, round(total_steps / eval_every / 10))
    if params is None:  # shapes only; the checkpoint fills in the values
        params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model))
    tx, schedule = create_optimizer(config, params, total_steps)
    if config.dry_run:  # shapes and dtypes only: nothing allocated
        host_state = jax.eval_shape(lambda p: create_train_state(p, tx, config.seed), params)
    else:
        host_state = jax.device_get(create_train_state(params, tx, config.seed))
    parallel.place(host_state, int(config.shard_min_mib * 2**20))
    return Run(config, workdir, dataset, model, parallel, tx, schedule, host_state, total_steps, eval_every,
               checkpoint_every, is_main=jax.process_index() == 0)


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
    )
    totals = None
    for batch in loader:
        sums = eval_step(params, parallel.put_batch(batch))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    loader.close()
    sums = parallel.host_metrics(totals)
    count = max(sums.pop("count"), 1.0)
    return {name: value / count for name, value in sums.items()}


def evaluate_checkpoint(run: Run, eval_step) -> int:
    """--eval-only: the metrics of one checkpoint (--eval-step, else the best, else the latest intact one)."""
    checkpoints = run.checkpoints
    step, (restored, _) = checkpoints.first_intact(lambda s: (s, checkpoints.restore(s, run.host_state,
                                                                                        run.parallel.state_sharding)),
                                                   run.config.eval_step)
    metrics = evaluate(eval_step, run.parallel.put_state(restored).params, run.dataset, run.model, run.config,
                       run.parallel)
    if run.is_main:
        print(json.dumps({"step": step, **{k: round(v, 6) for k, v in metrics.items()}}))
    return 0


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
    )


def initial_state(run: Run):
    """The host state a fresh run with the same flags starts from: its seeded init, or its --init weights."""
    import jax

    from vit_jax.training.state import create_train_state

    _, params = create_model(run.config, run.dataset.num_classes, None, run.parallel)
    return jax.device_get(create_train_state(params, run.tx, run.config.seed))


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

    config = run.config
    write_json_atomic(
        os.path.join(run.workdir, RUN_CONFIG_FILE),
        {
            "train": {**config.to_dict(), "workdir": run.workdir, "resume": False, "eval_only": False,
                      "eval_step": None},
            "model": run.model.to_dict(),
            "data": run.dataset.info,
            "eval_crop_fraction": run.dataset.eval.defaults.crop_fraction,  # predict applies the same transform
            "seed": config.seed,
            "total_steps": run.total_steps,
            "devices": jax.device_count(),
            "processes": jax.process_count(),
            "parallel": config.parallel,
            "mesh": run.parallel.mesh_shape,  # this session's; a resumed run may use another
            "jax_version": jax.__version__,
        },
    )


class TrainLog:
    """Per-step metrics: kept on device until a log step, then checked, averaged and written."""

    def __init__(self, run: Run, start_step: int):
        from tqdm import tqdm

        config = run.config
        self.run = run
        self.writer = MetricsWriter(run.workdir, enabled=run.is_main, resume_step=start_step if config.resume else None)
        self.bar = tqdm(total=run.total_steps, initial=start_step, disable=not (config.progress and run.is_main),
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
        if announce and self.run.is_main and self.run.config.progress:
            self.bar.write(f"step {step}: eval accuracy {metrics['accuracy']:.4f}  top-5 {metrics['top5']:.4f}  "
                           f"loss {metrics['loss']:.4f}")
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
            last_eval = evaluate(eval_step, state.params, run.dataset, run.model, config, run.parallel)
            log.eval(step, last_eval, announce=do_checkpoint)
        if do_checkpoint:
            checkpoints.save(step, run.parallel.checkpoint_state(state), loader.get_state(),
                             {"accuracy": last_eval["accuracy"]} if do_eval else None)
    return state, last_eval


def finish(run: Run, state, last_eval: dict, metrics_path: str, wall: float) -> int:
    """Curves, the optional torch export, summary.json and the closing lines."""
    # Every process takes part in gathering sharded params; only the main one writes.
    final_params = run.parallel.host_state(state.params) if run.config.export_torch else None
    if not run.is_main:
        return 0
    outputs = {"workdir": run.workdir, "checkpoints": run.checkpoints.directory, "metrics": metrics_path,
               "curves": plot_curves(run.workdir)}
    if run.config.export_torch:
        outputs["torch"] = export_torch(final_params, run.model, run.config.export_torch, run.config.overwrite)
    summary = {
        "final_step": run.total_steps,
        "eval": last_eval,
        "best_checkpoint_step": run.checkpoints.best_step(),
        "train_seconds": wall,
        "skipped_corrupt_files": skipped_corrupt_files(),
    }
    write_json_atomic(os.path.join(run.workdir, "summary.json"), summary)
    print(f"eval accuracy {last_eval['accuracy']:.4f} (top-5 {last_eval['top5']:.4f}) after {run.total_steps} steps "
          f"in {wall:.0f} s of training")
    for name, path in outputs.items():
        print(f"{name:12s} {path}")
    return 0


def build_train_step(run: Run):
    """The jitted train step (compiled on its first call, or by --dry-run on abstract inputs)."""
    from vit_jax import VisionTransformer
    from vit_jax.training.steps import StepOptions

    config = run.config
    return run.parallel.compile_train_step(
        apply_fn=VisionTransformer(run.model).apply,
        tx=run.tx,
        schedule=run.schedule,
        options=StepOptions(
            num_classes=run.model.num_classes,
            label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            accum_steps=config.accum_steps,
        ),
    )


def train(run: Run, eval_step) -> int:
    """Restore (on --resume), then the loop, then the closing outputs."""
    config = run.config
    loader = make_train_loader(run)
    host_state, start_step = restore_latest(run, loader) if config.resume else (run.host_state, 0)
    if start_step >= run.total_steps:
        loader.close()
        print(f"train.py: the run in {run.workdir} is complete: its latest checkpoint is step {start_step} and "
              f"it trains for {run.total_steps} steps; nothing to do (pass a larger --steps to train further)")
        return 0
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


# -- the run ------------------------------------------------------------------------


def _remove_unfinished(workdir: str, created: bool, before: set[str]) -> None:
    """Undo a fresh run that stopped before its first checkpoint: what it wrote goes, so a new start works."""
    if created:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in set(os.listdir(workdir)) - before:
        path = os.path.join(workdir, name)
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def run(config: TrainConfig) -> int:
    reset_skipped_corrupt_files()  # summary.json counts this run's files only
    setup = prepare(config)
    if config.dry_run:  # compiles the step on abstract inputs; writes memory.json and nothing else
        from vit_jax.training.dry_run import dry_run

        return dry_run(setup, build_train_step(setup))
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


def _run_locked(setup: Run, fresh: bool, created: bool) -> int:
    from vit_jax import VisionTransformer

    config, workdir = setup.config, setup.workdir
    os.makedirs(workdir, exist_ok=True)
    before = set(os.listdir(workdir)) | {LOCK_FILE}  # the lock goes when it is released

    def unfinished() -> bool:
        return fresh and setup.is_main and (setup.checkpoints is None or setup.checkpoints.latest_step() is None)

    forget = cli.on_forced_exit(lambda: unfinished() and _remove_unfinished(workdir, created, before))
    try:
        setup.checkpoints = Checkpointer(workdir, keep=config.keep_checkpoints, read_only=config.eval_only)
        eval_step = setup.parallel.compile_eval_step(VisionTransformer(setup.model).apply)
        return evaluate_checkpoint(setup, eval_step) if config.eval_only else train(setup, eval_step)
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


def export_torch(params: Any, model: ViTConfig, path: str, overwrite: bool = False) -> str:
    """The params as a timm-named safetensors file, with the ViTConfig JSON beside it (x.safetensors.json)."""
    from parity import flax_to_torch
    from vit_jax.formats.base import atomic_outputs, config_sidecar
    from vit_jax.formats.torch_sd import write_file

    tensors = flax_to_torch(params, model)
    with atomic_outputs(path, config_sidecar(path, is_dir=False), overwrite=overwrite) as (weights, sidecar):
        write_file(weights, tensors, path)
        sidecar.write_text(model.to_json())
    return os.path.abspath(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        from vit_jax.predict import main as predict_main

        return predict_main(argv[1:])
    try:
        with cli.interruptible():
            return run(parse_args(argv))
    except (ConfigError, DataError, ParallelError, CheckpointError, TrainingStopped, WorkdirBusy) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        cli.report_interrupt("train.py")
        return getattr(interrupt, "exit_code", 130)


if __name__ == "__main__":
    cli.exit(main())
