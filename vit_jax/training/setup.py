"""One run's setup: check the options against the data, the workdir and any saved run; build model and optimizer.

`prepare` does everything that can reject the inputs before anything is
written, and returns the `Run` every later phase reads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from typing import Any

import numpy as np

from vit_jax.config import ARCHITECTURE_FIELDS, ConfigError, ViTConfig
from vit_jax.cpu import onednn as cpu_matmuls
from vit_jax.data import Dataset, DatasetSpec, load_dataset
from vit_jax.formats import ConversionError, training_run
from vit_jax.kernels import resolve_kernels
from vit_jax.training.checkpoint import Checkpointer, CheckpointError
from vit_jax.training.config import (
    MODEL_OVERRIDES,
    RUN_CONFIG_FILE,
    TrainConfig,
    apply_model_overrides,
    resolve_model_config,
)
from vit_jax.training.mesh import parse_mesh
from vit_jax.training.parallel import DataParallel, initialize_distributed
from vit_jax.training.workdir_lock import LOCK_FILE, probe


def load_data(config: TrainConfig) -> Dataset:
    spec = DatasetSpec(
        kind=config.dataset,
        path=config.data_path,
        val_path=config.val_path,
        split_fraction=config.split_fraction,
        split_seed=config.split_seed,
        channels=config.channels,
    )
    return load_dataset(spec)


def warn_about_data(config: TrainConfig, dataset: Dataset) -> None:
    """Inputs that train without error but cannot give a meaningful run."""
    labels = getattr(dataset.train, "labels", None)  # a caller's own record source may not expose them
    classes = np.unique(labels) if labels is not None else None
    if classes is not None and len(classes) < 2:
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
    saved_ema = saved.get("train", {}).get("model_ema_decay", 0.0)
    if (saved_ema > 0) != (config.model_ema_decay > 0):
        raise ConfigError(f"--model-ema-decay {config.model_ema_decay}: the run's is {saved_ema} ({where}); an EMA "
                          "is kept from the first step or not at all")
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
                 parallel: DataParallel | None = None, base_model: ViTConfig | None = None,
                 init_weights: tuple[ViTConfig, Any] | None = None):
    """(ViTConfig, initial params or None when a checkpoint will supply them; shapes only for --dry-run).

    `base_model` (a caller's own ViTConfig) replaces the --model preset; flags still override it.
    `init_weights` (ViTConfig, params) replace --init's file.
    `parallel`'s mesh is checked against the model (heads, MLP width) before anything compiles.
    """
    import jax

    from vit_jax.model import init_params, param_shapes

    def check(model: ViTConfig) -> None:
        if parallel is not None:
            parallel.check_model(model.num_heads, model.mlp_dim)

    if saved_model is not None:  # resume / eval-only: the run's own architecture; kernels as this run asks
        kernels = resolve_kernels(config.kernels)
        model = ViTConfig.from_dict(saved_model)
        check(model)
        return model.replace(kernels=kernels, recompute_gelu=model.recompute_gelu and kernels == "cpu"), None
    if config.init is None:
        model = (resolve_model_config(config, num_classes) if base_model is None
                 else apply_model_overrides(base_model, config, num_classes))
        check(model)
        return model, param_shapes(model) if config.dry_run else jax.device_get(init_params(model, config.seed))
    model, params = _fine_tuned_model(config, num_classes, init_weights)
    check(model)
    return model, params


def _weights_held(weights: tuple[ViTConfig, Any], config: TrainConfig, num_classes: int):
    """`train(init=(ViTConfig, params))`: the caller's weights, resized and re-headed as --init's file would be."""
    from vit_jax.formats.mapping import flatten, unflatten
    from vit_jax.formats.read import FLAX, _adapt
    from vit_jax.params import unstack_block_params

    pretrained, params = weights
    try:
        tensors = {key: np.asarray(value) for key, value in flatten(unstack_block_params(params)).items()}
        target = pretrained.replace(num_classes=num_classes, **({"image_size": config.image_size}
                                                                 if config.image_size is not None else {}))
    except (ConfigError, AttributeError, TypeError) as error:
        raise ConfigError(f"init=(config, params): {error}") from None
    if not config.allow_nonfinite_init and not all(np.isfinite(t).all() for t in tensors.values()):
        raise ConfigError("init=(config, params): the params hold NaN or infinity (allow_nonfinite_init=True "
                          "accepts them)")
    _adapt(tensors, pretrained, target, FLAX, new_head=True)
    return target, unflatten(tensors)


def _fine_tuned_model(config: TrainConfig, num_classes: int, init_weights: tuple[ViTConfig, Any] | None = None):
    """--init: the checkpoint's architecture, resized and re-headed; flags may change numerics and runtime only.

    `init_weights` (ViTConfig, params) held in memory take the place of --init's file.
    """
    from vit_jax.formats.read import read_flax_params  # imports torch: only when fine-tuning
    from vit_jax.params import to_layout

    try:
        pretrained, params = (_weights_held(init_weights, config, num_classes) if init_weights is not None else
                              read_flax_params(config.init, image_size=config.image_size, num_classes=num_classes,
                                               step=config.init_step, allow_nonfinite=config.allow_nonfinite_init))
    except ConversionError as error:  # (the converter's flag is --allow-nonfinite; here it has a name of its own)
        message = str(error).replace("--allow-nonfinite", "--allow-nonfinite-init")
        raise ConfigError(f"--init {config.init}: {message}") from None
    fixed = [f for f in ARCHITECTURE_FIELDS if f not in ("image_size", "num_classes") and hasattr(config, f)]
    changed = [f for f in fixed if getattr(config, f) is not None and getattr(config, f) != getattr(pretrained, f)]
    if changed:
        raise ConfigError(f"--{changed[0].replace('_', '-')} differs from the --init checkpoint's architecture")
    if config.channels != pretrained.num_channels:
        raise ConfigError(f"--channels {config.channels}: the --init checkpoint takes {pretrained.num_channels}")
    model = apply_model_overrides(pretrained, dataclasses.replace(config, image_size=None), num_classes)
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
        ema_decay=config.model_ema_decay,
        layer_decay=config.layer_decay,
    )
    return tx, schedule


def default_workdir(data_kind: str) -> str:
    return os.path.join("runs", f"{data_kind}-{time.strftime('%Y%m%d-%H%M%S')}")


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
    base_model: ViTConfig | None = None  # a caller's own ViTConfig in place of the --model preset
    init_weights: tuple[ViTConfig, Any] | None = None  # a caller's (ViTConfig, params) in place of --init's file
    verbose: bool = True  # print what the command prints (progress, eval lines, the closing summary)


def _check_outputs(config: TrainConfig, workdir: str, is_main: bool) -> dict | None:
    """The workdir and --export-torch are usable; on --resume / --eval-only, the run's saved config."""
    check_workdir_path(workdir)
    if config.export_torch and not config.eval_only:  # refused now, not after training; --eval-only exports nothing
        from vit_jax.formats.base import check_output_path

        try:
            check_output_path(config.export_torch, overwrite=config.overwrite)
        except ConversionError as error:
            raise ConfigError(f"--export-torch {error}") from None
    if is_main and not config.eval_only and os.path.isdir(workdir):
        probe(workdir)
    if config.resume or config.eval_only:
        saved = read_run_config(workdir)
        check_same_model(config, saved, workdir)
        return saved
    if os.path.isdir(workdir) and not is_unused_workdir(workdir) and not config.dry_run:  # dry: memory.json only
        raise ConfigError(f"--workdir {workdir} already holds files; pass --resume to continue that run or "
                          "choose another")
    return None


def prepare(config: TrainConfig, dataset: Dataset | None = None, base_model: ViTConfig | None = None,
            verbose: bool = True, init_weights: tuple[ViTConfig, Any] | None = None) -> Run:
    """Everything that can reject the inputs, before anything is written.

    `dataset` (a caller's own data) replaces the one the options name; `base_model` the --model preset;
    `init_weights` (ViTConfig, params) --init's file.
    """
    try:
        cpu_matmuls.select(config.cpu_matmuls)  # XLA_FLAGS: before the backend starts
    except RuntimeError as error:
        raise ConfigError(str(error)) from None
    initialize_distributed(config.coordinator_address, config.num_processes, config.process_id,
                           config.coordination_timeout, config.workdir)
    import jax

    from vit_jax.model import param_shapes
    from vit_jax.training.state import create_train_state

    if config.workdir is None and jax.process_count() > 1:
        raise ConfigError("a multi-process run needs --workdir (a directory every process can reach)")
    data_kind = dataset.info.get("kind", "data") if dataset is not None else config.dataset
    workdir = os.path.abspath(config.workdir or default_workdir(data_kind))
    saved = _check_outputs(config, workdir, jax.process_index() == 0)
    parallel = DataParallel(config.parallel, config.batch_size, config.global_eval_batch_size, config.accum_steps,
                            parse_mesh(config.mesh))
    dataset = dataset if dataset is not None else load_data(config)
    warn_about_data(config, dataset)
    model, params = create_model(config, dataset.num_classes, saved and saved["model"], parallel, base_model,
                                 init_weights)
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
               checkpoint_every, is_main=jax.process_index() == 0, base_model=base_model, init_weights=init_weights,
               verbose=verbose)


def initial_state(run: Run):
    """The host state a fresh run with the same flags starts from: its seeded init, or its --init weights."""
    import jax

    from vit_jax.training.state import create_train_state

    _, params = create_model(run.config, run.dataset.num_classes, None, run.parallel, run.base_model,
                             run.init_weights)
    return jax.device_get(create_train_state(params, run.tx, run.config.seed))


def build_train_step(run: Run):
    """The jitted train step (compiled on its first call, or by --dry-run on abstract inputs)."""
    from vit_jax.model import VisionTransformer
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
