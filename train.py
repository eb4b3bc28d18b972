"""Train or fine-tune a Vision Transformer with optax under jit, one device to many hosts.

    python train.py                       # small ViT from scratch on scikit-learn's digits
    python train.py --help                # every option
    python train.py --dataset folder --data-path ~/flowers --init ViT-B_16.npz \\
        --model B/16 --image-size 224 --lr 3e-3 --batch-size 512 --steps 2000
    python train.py --resume --workdir runs/NAME
    python train.py --eval-only --workdir runs/NAME
    python train.py predict --checkpoint runs/NAME image.png ...

Reads top to bottom: create the state, the train and eval steps (pure, jitted
once, in vit_jax/training/steps.py), then the loop, which owns the I/O: data,
logging, evaluation and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from vit_jax.cpu import onednn as cpu_matmuls
from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import (
    DataError,
    DatasetSpec,
    load_dataset,
    make_loader,
    reset_skipped_corrupt_files,
    skipped_corrupt_files,
)
from vit_jax.training.checkpoint import CheckpointError, Checkpointer
from vit_jax.training.config import RUN_CONFIG_FILE, TrainConfig, apply_model_overrides, parse_args, resolve_model_config
from vit_jax.training.metrics import MetricsWriter, plot_curves
from vit_jax.training.parallel import DataParallel, ParallelError, initialize_distributed


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


def create_model(config: TrainConfig, num_classes: int, saved_model: dict | None):
    """(ViTConfig, initial params or None when a checkpoint will supply them)."""
    import jax

    from vit_jax import init_params, load_pretrained

    if saved_model is not None:  # resume / eval-only: the run's own architecture
        return ViTConfig.from_dict(saved_model), None
    if config.init is None:
        model = resolve_model_config(config, num_classes)
        return model, jax.device_get(init_params(model, config.seed))
    from parity.formats import ConversionError  # imports torch: only when fine-tuning

    try:
        pretrained, params = load_pretrained(config.init, image_size=config.image_size, num_classes=num_classes)
    except ConversionError as error:
        raise ConfigError(f"--init {config.init}: {error}") from None
    # Architecture comes from the checkpoint; flags may change numerics and runtime options only.
    fixed = ("patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers", "classifier")
    changed = [f for f in fixed if getattr(config, f) is not None and getattr(config, f) != getattr(pretrained, f)]
    if changed:
        raise ConfigError(f"--{changed[0].replace('_', '-')} differs from the --init checkpoint's architecture")
    if config.channels != pretrained.num_channels:
        raise ConfigError(f"--channels {config.channels}: the --init checkpoint takes {pretrained.num_channels}")
    model = apply_model_overrides(pretrained, dataclasses.replace(config, image_size=None), num_classes)
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


def write_json_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_run_config(workdir: str) -> dict:
    path = os.path.join(workdir, RUN_CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir} is not a run directory: {RUN_CONFIG_FILE} is missing")
    with open(path) as f:
        return json.load(f)


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


# -- the run ------------------------------------------------------------------------


def run(config: TrainConfig) -> int:
    try:
        cpu_matmuls.select(config.cpu_matmuls)  # XLA_FLAGS: before the backend starts
    except RuntimeError as error:
        raise ConfigError(str(error)) from None
    initialize_distributed(config.coordinator_address, config.num_processes, config.process_id)
    import jax

    from vit_jax import param_shapes
    from vit_jax.training.state import create_train_state

    is_main = jax.process_index() == 0
    reset_skipped_corrupt_files()  # summary.json counts this run's files only
    if config.workdir is None and jax.process_count() > 1:
        raise ConfigError("a multi-process run needs --workdir (a directory every process can reach)")
    workdir = os.path.abspath(config.workdir or default_workdir(config))
    continuing = config.resume or config.eval_only
    if continuing:
        saved = read_run_config(workdir)
    elif os.path.isdir(workdir) and os.listdir(workdir):
        raise ConfigError(f"--workdir {workdir} already holds files; pass --resume to continue that run or choose another")
    else:
        saved = None

    # Everything that can reject the inputs runs before anything is written.
    dataset = load_data(config)
    model, params = create_model(config, dataset.num_classes, saved and saved["model"])
    parallel = DataParallel(config.parallel, config.batch_size, config.global_eval_batch_size, config.accum_steps)
    total_steps = config.steps or max(1, math.ceil(config.epochs * len(dataset.train) / config.batch_size))
    steps_per_epoch = max(1, len(dataset.train) // config.batch_size)
    eval_every = config.eval_every or steps_per_epoch
    # About ten checkpoints per run by default, each at an eval step so "best" is known.
    checkpoint_every = config.checkpoint_every or eval_every * max(1, round(total_steps / eval_every / 10))
    if params is None:  # shapes only; the checkpoint fills in the values
        params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(model))
    tx, schedule = create_optimizer(config, params, total_steps)
    host_state = create_train_state(params, tx, config.seed)
    host_state = jax.device_get(host_state)

    created = not os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    checkpoints = None
    try:
        checkpoints = Checkpointer(workdir, keep=config.keep_checkpoints, read_only=config.eval_only)
        return _run_in(workdir, config, dataset, model, parallel, tx, schedule, host_state, checkpoints,
                       total_steps, eval_every, checkpoint_every, is_main)
    except BaseException:
        # A fresh run that fails before its first checkpoint leaves nothing behind.
        if created and is_main and (checkpoints is None or checkpoints.latest_step() is None):
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        if checkpoints is not None:
            checkpoints.close()


def _run_in(workdir, config, dataset, model, parallel, tx, schedule, host_state, checkpoints,
            total_steps, eval_every, checkpoint_every, is_main) -> int:
    import jax
    from tqdm import tqdm

    from vit_jax import VisionTransformer
    from vit_jax.training.steps import StepOptions

    apply_fn = VisionTransformer(model).apply
    eval_step = parallel.compile_eval_step(apply_fn)

    if config.eval_only:
        step = config.eval_step or checkpoints.best_step() or checkpoints.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint to evaluate in {checkpoints.directory}")
        restored, _ = checkpoints.restore(step, host_state)
        metrics = evaluate(eval_step, parallel.put_state(restored).params, dataset, model, config, parallel)
        if is_main:
            print(json.dumps({"step": step, **{k: round(v, 6) for k, v in metrics.items()}}))
        return 0

    loader = make_loader(
        dataset.train,
        batch_size=parallel.process_batch_size,
        image_size=model.image_hw,
        mean=model.pixel_mean,
        std=model.pixel_std,
        train=True,
        seed=config.seed,
        num_epochs=None,
        num_workers=config.num_workers,
        augment=config.augment,
        on_corrupt=config.on_corrupt,
    )
    start_step = 0
    if config.resume:
        latest = checkpoints.latest_step()
        if latest is None:
            raise CheckpointError(f"--resume: no checkpoint in {checkpoints.directory}")
        host_state, data_state = checkpoints.restore(latest, host_state)
        loader.set_state(data_state)
        start_step = int(host_state.step)
    if is_main:
        write_json_atomic(
            os.path.join(workdir, RUN_CONFIG_FILE),
            {
                "train": {**config.to_dict(), "workdir": workdir, "resume": False, "eval_only": False, "eval_step": None},
                "model": model.to_dict(),
                "data": dataset.info,
                "eval_crop_fraction": dataset.eval.defaults.crop_fraction,  # predict applies the same transform
                "seed": config.seed,
                "total_steps": total_steps,
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "parallel": config.parallel,
                "jax_version": jax.__version__,
            },
        )

    state = parallel.put_state(host_state)
    train_step = parallel.compile_train_step(
        apply_fn=apply_fn,
        tx=tx,
        schedule=schedule,
        options=StepOptions(
            num_classes=model.num_classes,
            label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha,
            accum_steps=config.accum_steps,
        ),
    )
    writer = MetricsWriter(workdir, enabled=is_main, resume_step=start_step if config.resume else None)
    bar = tqdm(total=total_steps, initial=start_step, disable=not (config.progress and is_main),
               unit="step", dynamic_ncols=True, file=sys.stdout)
    pending: list[tuple[int, dict]] = []
    window_start = time.perf_counter()
    last_eval: dict[str, float] = {}
    started = time.perf_counter()

    def flush(step: int) -> None:
        """Fetch the pending per-step metrics, stop on a non-finite loss, log the window mean."""
        nonlocal pending, window_start
        if not pending:
            return
        fetched = [(s, parallel.host_metrics(m)) for s, m in pending]
        for s, values in fetched:
            if not math.isfinite(values["loss"]):
                last_good = checkpoints.latest_step()
                where = (f"the last good checkpoint is step {last_good} in {checkpoints.directory} "
                         f"(continue with --resume --workdir {workdir}, e.g. with a lower --lr)"
                         if last_good is not None else "no checkpoint was saved before it")
                raise TrainingStopped(f"loss became {values['loss']} at step {s}; stopped. {where}")
        elapsed = time.perf_counter() - window_start
        mean = {k: float(np.mean([v[k] for _, v in fetched])) for k in fetched[0][1]}
        mean["step_time"] = elapsed / len(fetched)
        mean["images_per_sec"] = config.batch_size * len(fetched) / elapsed
        writer.write(step, "train", mean)
        bar.set_postfix(loss=f"{mean['loss']:.3f}", acc=f"{mean['accuracy']:.3f}",
                        img_s=f"{mean['images_per_sec']:.0f}", refresh=False)
        pending, window_start = [], time.perf_counter()

    for step in range(start_step + 1, total_steps + 1):
        state, metrics = train_step(state, parallel.put_batch(next(loader)))
        pending.append((step, metrics))
        bar.update(1)
        last = step == total_steps
        do_eval, do_checkpoint = step % eval_every == 0 or last, step % checkpoint_every == 0 or last
        if step % config.log_every == 0 or do_eval or do_checkpoint or last:
            flush(step)
        if do_eval:
            last_eval = evaluate(eval_step, state.params, dataset, model, config, parallel)
            writer.write(step, "eval", last_eval)
            if is_main and config.progress and do_checkpoint:
                bar.write(f"step {step}: eval accuracy {last_eval['accuracy']:.4f}  top-5 {last_eval['top5']:.4f}  "
                          f"loss {last_eval['loss']:.4f}")
            window_start = time.perf_counter()
        if do_checkpoint:
            checkpoints.save(step, parallel.host_state(state), loader.get_state(),
                             {"accuracy": last_eval["accuracy"]} if do_eval else None)
    bar.close()
    loader.close()
    checkpoints.wait()
    wall = time.perf_counter() - started
    writer.close()

    final_params = parallel.host_state(state).params
    outputs = {"workdir": workdir, "checkpoints": checkpoints.directory, "metrics": writer.path}
    if is_main:
        outputs["curves"] = plot_curves(workdir)
        if config.export_torch:
            outputs["torch"] = export_torch(final_params, model, config.export_torch)
        summary = {
            "final_step": total_steps,
            "eval": last_eval,
            "best_checkpoint_step": checkpoints.best_step(),
            "train_seconds": wall,
            "skipped_corrupt_files": skipped_corrupt_files(),
        }
        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
        print(f"eval accuracy {last_eval['accuracy']:.4f} (top-5 {last_eval['top5']:.4f}) after {total_steps} steps "
              f"in {wall:.0f} s of training")
        for name, path in outputs.items():
            print(f"{name:12s} {path}")
    return 0


def export_torch(params: Any, model: ViTConfig, path: str) -> str:
    """The params as a timm-named safetensors file, with the ViTConfig JSON beside it (x.safetensors.json)."""
    from parity import flax_to_torch
    from parity.formats.base import atomic_outputs, config_sidecar
    from parity.formats.torch_sd import write_file

    tensors = flax_to_torch(params, model)
    with atomic_outputs(path, config_sidecar(path, is_dir=False)) as (weights, sidecar):
        write_file(weights, tensors, path)
        sidecar.write_text(model.to_json())
    return os.path.abspath(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        from vit_jax.predict import main as predict_main

        return predict_main(argv[1:])
    try:
        return run(parse_args(argv))
    except (ConfigError, DataError, ParallelError, CheckpointError, TrainingStopped) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
