"""The training configuration: one frozen dataclass, its command line and config file.

Precedence: dataclass defaults < `--config FILE` (JSON, either a flat dict of
these fields or a run's `config.json`, whose "train" section is used) <
flags given on the command line. Every field is a flag (`batch_size` ->
`--batch-size`) whose `--help` text is the field's `help` metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from typing import Any

from vit_jax.config import CLASSIFIERS, KERNELS, REMAT_POLICIES, ConfigError, ViTConfig, get_config, unknown_field_hints
from vit_jax.cpu.onednn import CHOICES as CPU_MATMUL_CHOICES
from vit_jax.data.errors import DataError
from vit_jax.data.rand_augment import parse_rand_augment
from vit_jax.data.random_erasing import RandomErasing
from vit_jax.formats.training_run import RUN_CONFIG as RUN_CONFIG_FILE  # the resolved config of every run
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.kernels import resolve_kernels
from vit_jax.training.mesh import DEFAULT_MESH, parse_mesh


def _field(default: Any, help: str, choices: tuple | None = None, flag_type: type | None = None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "type": flag_type})


# The embedded default: a small ViT for the 8x8 digits, tuned (with the default
# optimiser flags and 150 epochs) to pass 97% test accuracy in under two minutes
# on a 2-core CPU (see docs/training.md, "The default run").
DIGITS_MODEL = ViTConfig(
    name="ViT-digits",
    image_size=16,  # the 8x8 digits upsampled: smoother patches learn faster than 2x2 ones
    patch_size=4,
    num_classes=10,
    hidden_size=64,
    mlp_dim=128,
    num_heads=4,
    num_layers=3,
    classifier="gap",  # mean-pooled tokens: about 1 point better than the class token here, across seeds
    stochastic_depth_rate=0.1,  # with 150 epochs: 98.1% for seeds 0 and 1, robust to float noise
)
TRAINING_PRESETS = {DIGITS_MODEL.name: DIGITS_MODEL}

# The data kind config.json records for a caller's in-memory arrays (vit_jax.training.in_memory).
IN_MEMORY_KIND = "arrays"

# Every pooling the model has that gives one prediction per image (the unpooled ones keep a token axis).
TRAINED_CLASSIFIERS = tuple(c for c in CLASSIFIERS if "unpooled" not in c)

# Model fields a flag may override, by flag name.
MODEL_OVERRIDES = (
    "image_size",
    "patch_size",
    "hidden_size",
    "mlp_dim",
    "num_heads",
    "num_layers",
    "classifier",
    "dropout_rate",
    "attention_dropout_rate",
    "stochastic_depth_rate",
    "scan",
    "remat",
    "remat_policy",
    "recompute_gelu",
    "resnet_layers",
    "width_factor",
)


def stage_units(text: str) -> tuple[int, ...]:
    """--resnet-layers '3,4,9' -> (3, 4, 9); 'root' -> () (the root conv and pool alone)."""
    if text.strip() in ("root", ""):
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated unit counts per stage such as '3,4,9', or 'root', got {text!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # -- model ------------------------------------------------------------
    model: str = _field("ViT-digits",
                        "model preset: ViT-digits, ViT-testing, ViT-B_16, short names such as 'S/16', ...")
    image_size: int | None = _field(None,
                                    "input resolution in pixels (default: the preset's; fine-tuning resizes position "
                                    "embeddings)", flag_type=int)
    patch_size: int | None = _field(None, "patch size (default: the preset's)", flag_type=int)
    hidden_size: int | None = _field(None, "transformer width (default: the preset's)", flag_type=int)
    mlp_dim: int | None = _field(None, "MLP hidden width (default: the preset's)", flag_type=int)
    num_heads: int | None = _field(None, "attention heads (default: the preset's)", flag_type=int)
    num_layers: int | None = _field(None, "transformer blocks (default: the preset's)", flag_type=int)
    classifier: str | None = _field(
        None, "pooling: token (class token), gap (mean of patch tokens), token_gap (class token kept, the head reads "
        "the patch mean), map (attention pooling with a learnt probe)", TRAINED_CLASSIFIERS)
    dropout_rate: float | None = _field(None, "dropout after attention/MLP/embeddings", flag_type=float)
    attention_dropout_rate: float | None = _field(None, "dropout on attention probabilities", flag_type=float)
    stochastic_depth_rate: float | None = _field(None, "largest drop-path rate (reached at the last block)",
                                                 flag_type=float)
    dtype: str = _field("float32", "compute dtype; master weights and optimizer state stay float32",
                        ("float32", "bfloat16"))
    scan: bool | None = _field(None, "nn.scan over blocks (compile time flat in depth)", flag_type=bool)
    remat: bool | None = _field(None, "rematerialise blocks in the backward pass (less memory, more compute)",
                                flag_type=bool)
    remat_policy: str | None = _field(
        None,
        "with --remat, what each block keeps: nothing_saveable (least memory) or the matmul outputs "
        "(dots_with_no_batch_dims_saveable: less memory than no remat and, on CPU, faster; dots_saveable)",
        REMAT_POLICIES,
    )
    recompute_gelu: bool | None = _field(
        None, "the MLP's backward pass recomputes GELU's output instead of keeping it (less memory, needs dropout 0)",
                                         flag_type=bool
    )
    resnet_layers: tuple[int, ...] | None = _field(
        None, "hybrid ResNet stem: units per stage, comma-separated ('3,4,9'; 'root' for the root conv alone)",
        flag_type=stage_units,
    )
    width_factor: float | None = _field(None, "hybrid ResNet stem width: root int(64 * factor) channels",
                                        flag_type=float)
    kernels: str = _field(
        "auto",
        "how the model's operations run: reference (plain Flax/JAX, any backend), cpu (XLA:CPU forms of the same "
        "function, faster there; reverse-mode autodiff only) or auto (cpu on a CPU backend, else reference)",
        ("auto", *KERNELS),
    )
    init: str | None = _field(
        None,
        "fine-tune from this checkpoint (Google npz, Flax msgpack/orbax, timm safetensors, HF, torchvision), or from "
        "a training run: its --workdir, its checkpoints/ directory or one step directory (the run's config.json "
        "gives the architecture; a directory resolves to its best step by eval accuracy, else the latest)",
    )
    init_step: int | None = _field(None, "with --init a training run: the checkpoint step to start from", flag_type=int)
    allow_nonfinite_init: bool = _field(False, "accept --init weights holding NaN or infinity (refused by default)")
    freeze_backbone: bool = _field(False, "train only the head (and pre-logits); everything else stays at --init")
    # -- data -------------------------------------------------------------
    dataset: str = _field("digits", "data source", ("digits", "folder", "cifar10", "cifar100", "npz"))
    data_path: str | None = _field(None, "folder root, CIFAR directory or .npz file (not used by digits)")
    val_path: str | None = _field(None, "separate eval folder/.npz (default: <root>/val, or a held-out split)")
    split_fraction: float = _field(0.2, "fraction held out for eval when there is no separate eval split")
    split_seed: int = _field(0, "seed of the stratified train/eval split")
    channels: int = _field(3, "image channels fed to the model (grey and RGBA are converted)", (1, 3))
    augment: bool = _field(True, "random-resized crop and flip for training")
    aa: str | None = _field(None, "RandAugment for training, in timm's grammar, e.g. rand-m9-mstd0.5-inc1 "
                            "(docs/training.md)")
    reprob: float = _field(0.0, "random erasing: the probability an image is erased (timm's semantics; 0: off)")
    remode: str = _field("pixel", "random erasing fill: zeros (the mean), one random colour, or noise per pixel",
                         ("const", "rand", "pixel"))
    recount: int = _field(1, "random erasing: up to this many boxes per erased image")
    num_workers: int = _field(0, "background loader processes (0: load in threads of this process)")
    on_corrupt: str = _field("skip", "an undecodable image: skip it with a warning and a count, or stop",
                             ("skip", "error"))
    # -- optimisation -----------------------------------------------------
    optimizer: str = _field(
        "adamw", "optimizer (hyperparameters each reads: docs/training.md, \"Optimizers\")",
        ("adamw", "sgd", "lion", "lamb", "adafactor", "muon"))
    lr: float = _field(2e-3, "peak learning rate (reached after warmup)")
    schedule: str = _field("cosine", "decay after warmup", ("cosine", "linear", "constant"))
    warmup_steps: int = _field(100, "linear warmup steps from 0 to --lr")
    end_lr_factor: float = _field(0.0, "final learning rate as a fraction of --lr")
    weight_decay: float = _field(0.05, "decoupled weight decay on kernels only (not norms, biases, embeddings, cls)")
    b1: float = _field(0.9, "beta1 of adamw, lion, lamb and muon's AdamW part")
    b2: float = _field(0.999, "beta2 of adamw, lion (paper: 0.99), lamb and muon's AdamW part")
    momentum: float = _field(0.9, "SGD momentum (0: plain SGD)")
    nesterov: bool = _field(False, "Nesterov momentum for SGD")
    model_ema_decay: float = _field(
        0.0, "keep an exponential moving average of the weights with this decay per step (timm: 0.9998; 0: off); "
        "eval, --eval-only and --export-torch then use it, and checkpoints hold it")
    layer_decay: float | None = _field(
        None, "layer-wise lr decay (BEiT/timm, e.g. 0.65-0.75 for fine-tuning): block i of L gets lr x D^(L-i), "
        "the embeddings D^(L+1), the final norm and head the full lr (docs/training.md)", flag_type=float)
    grad_clip: float = _field(1.0, "clip gradients to this global norm (0: off)")
    label_smoothing: float = _field(0.1, "label smoothing of the training targets")
    mixup_alpha: float = _field(0.0, "mixup Beta(alpha, alpha) (0: off)")
    cutmix_alpha: float = _field(0.0, "CutMix Beta(alpha, alpha) (0: off); with mixup, one of the two per batch")
    batch_size: int = _field(128, "global batch size (all devices and processes together)")
    eval_batch_size: int | None = _field(None, "global eval batch size (default: --batch-size)", flag_type=int)
    accum_steps: int = _field(1, "split each batch into this many micro-batches and accumulate their gradients")
    steps: int | None = _field(None, "total optimizer steps (default: from --epochs)", flag_type=int)
    epochs: float = _field(150.0, "passes over the training split (used when --steps is not given)")
    seed: int = _field(0, "seed of the model init, the data order and the per-step RNG")
    # -- run --------------------------------------------------------------
    workdir: str | None = _field(None, "output directory (default: runs/<dataset>-<time>)")
    resume: bool = _field(
        False,
        "continue from the latest checkpoint in --workdir (a damaged one is named, moved to "
        "damaged_checkpoints/ and the newest intact one used); model flags must match the run's",
    )
    eval_every: int | None = _field(None, "evaluate every N steps (default: once per epoch)", flag_type=int)
    checkpoint_every: int | None = _field(None,
                                          "checkpoint every N steps (default: about 10 per run, at eval steps); "
                                          "always at the end", flag_type=int)
    keep_checkpoints: int = _field(3, "keep the last K checkpoints (and the best by eval accuracy)")
    log_every: int = _field(10, "write train metrics every N steps")
    progress: bool = _field(True, "show a progress bar")
    cpu_matmuls: str = _field(
        "xla",
        "XLA:CPU products: XLA's own, or oneDNN's (experimental XLA flags; faster on x86, see vit_jax/cpu/onednn.py)",
        CPU_MATMUL_CHOICES,
    )
    parallel: str = _field("jit", "data parallelism: jit over a device mesh, or pmap", ("jit", "pmap"))
    mesh: str = _field(
        DEFAULT_MESH,
        "device mesh AXIS=N,...: data (batch), fsdp (batch and every weight sharded), model (heads and MLP "
        "width split, Megatron-style); one size may be -1 (the rest of the devices); the product is the device count",
    )
    shard_min_mib: float = _field(4.0, "weights smaller than this many MiB stay replicated on an fsdp/model mesh")
    dry_run: bool = _field(
        False,
        "compile the train step for the model, batch and mesh without allocating the weights; print the memory "
        "per device and write WORKDIR/memory.json, then exit",
    )
    coordinator_address: str | None = _field(None, "host:port of process 0 for a multi-process run")
    num_processes: int | None = _field(None, "number of processes in a multi-process run", flag_type=int)
    process_id: int | None = _field(None, "this process's index in a multi-process run", flag_type=int)
    coordination_timeout: int = _field(
        60, "seconds a process of a multi-process run may go silent before the others count it as gone and stop "
        "(one error line each, exit status 3)")
    export_torch: str | None = _field(None, "write the final params as a timm-named PyTorch .safetensors file")
    overwrite: bool = _field(False, "replace an existing --export-torch file and its .json (refused by default)")
    eval_only: bool = _field(False, "evaluate a checkpoint of --workdir (the best, or --eval-step) and exit")
    eval_step: int | None = _field(
        None, "checkpoint step for --eval-only (default: best by eval accuracy, else latest; a damaged default is "
        "skipped with a warning for the newest intact one)", flag_type=int)

    def __post_init__(self):
        if isinstance(self.resnet_layers, list):  # from a JSON file
            object.__setattr__(self, "resnet_layers", tuple(self.resnet_layers))
        self.validate()

    def validate(self) -> None:
        positive = ("batch_size", "accum_steps", "log_every", "keep_checkpoints", "coordination_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {getattr(self, name)!r}")
        for name in ("eval_batch_size", "steps", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{_flag(name)} must be positive, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be > 0 and finite, got {self.lr!r}")
        for name in ("b1", "b2", "momentum"):  # a decay of 1 or more never forgets: the updates blow up
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)!r}")
        for f in dataclasses.fields(self):  # inf or nan in any rate, size or factor makes no run
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{_flag(f.name)} must be a finite number, got {value!r}")
        if self.steps is None and not self.epochs > 0:
            raise ConfigError(f"--epochs must be > 0, got {self.epochs!r}")
        for name in ("warmup_steps",):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip", "mixup_alpha", "cutmix_alpha", "end_lr_factor", "momentum"):
            if not getattr(self, name) >= 0:  # (not `< 0`: NaN passes that)
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)!r}")
        if self.aa is not None:
            try:
                parse_rand_augment(self.aa)
            except DataError as error:
                raise ConfigError(str(error)) from None
        try:
            RandomErasing(self.reprob, self.remode, self.recount)
        except DataError as error:
            raise ConfigError(str(error)) from None
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay must be in (0, 1], got {self.layer_decay!r}")
        if not 0 <= self.model_ema_decay < 1:
            raise ConfigError(f"--model-ema-decay must be in [0, 1), got {self.model_ema_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 < self.split_fraction < 1:
            raise ConfigError(f"--split-fraction must be in (0, 1), got {self.split_fraction!r}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"--{_flag(f.name)} {value!r} is not one of {choices}")
        if self.init_step is not None and self.init is None:
            raise ConfigError("--init-step needs --init (a training run to start from)")
        if self.freeze_backbone and self.init is None:
            raise ConfigError("--freeze-backbone needs --init (a pretrained backbone to keep)")
        if self.dataset != "digits" and self.data_path is None:
            raise ConfigError(f"--dataset {self.dataset} needs --data-path")
        if self.export_torch is not None and not self.export_torch.endswith(".safetensors"):
            raise ConfigError(f"--export-torch {self.export_torch}: expected a path ending in .safetensors")
        try:
            parse_mesh(self.mesh)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if not self.shard_min_mib >= 0:
            raise ConfigError(f"--shard-min-mib must be >= 0, got {self.shard_min_mib!r}")
        if self.dry_run and self.parallel != "jit":
            raise ConfigError("--dry-run compiles the jit step; it cannot be combined with --parallel pmap")
        if self.dry_run and (self.resume or self.eval_only):
            raise ConfigError("--dry-run compiles a fresh run's step; it cannot be combined with --resume or "
                              "--eval-only")
        if (self.resume or self.eval_only) and self.workdir is None:
            raise ConfigError("--resume and --eval-only need --workdir (the run directory)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def global_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


def _flag(name: str) -> str:
    return name.replace("_", "-")


def resolve_model_config(config: TrainConfig, num_classes: int) -> ViTConfig:
    """The ViTConfig of a fresh model: the preset, flag overrides, the data's classes/channels."""
    if config.model in TRAINING_PRESETS:
        model = TRAINING_PRESETS[config.model]
    else:
        try:
            model = get_config(config.model)
        except ConfigError as error:
            raise ConfigError(f"{error} Training presets: {', '.join(TRAINING_PRESETS)}.") from None
    return apply_model_overrides(model, config, num_classes)


def apply_model_overrides(model: ViTConfig, config: TrainConfig, num_classes: int) -> ViTConfig:
    overrides = {name: getattr(config, name) for name in MODEL_OVERRIDES if getattr(config, name) is not None}
    channels = config.channels
    if channels != model.num_channels:
        # One normalisation value per channel; the preset's first is representative.
        overrides.update(
            pixel_mean=(model.pixel_mean[0],) * channels,
            pixel_std=(model.pixel_std[0],) * channels,
        )
    kernels = resolve_kernels(config.kernels)
    return model.replace(num_classes=num_classes, num_channels=channels, dtype=config.dtype, kernels=kernels,
                         **overrides)


def _field_type(f: dataclasses.Field) -> type:
    if f.metadata.get("type"):
        return f.metadata["type"]
    return type(f.default) if f.default is not None else str


def _help_with_default(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if "(default" in text:
        return text
    if f.default is None:
        return f"{text} (default: the preset's)" if f.name in MODEL_OVERRIDES else text
    return f"{text} (default: {f.default})"


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train or fine-tune a Vision Transformer. With no arguments, trains a small ViT "
            f"from scratch on scikit-learn's digits. `{prog} predict --help` for prediction; from Python, "
            "vit_jax.training.train(...) takes these options as keywords."
        ),
        epilog=(
            "Checkpoints go to WORKDIR/checkpoints/<step>. A run directory read as a checkpoint (--eval-only, "
            "predict, --init) resolves to its best step by eval accuracy, else the latest; a damaged checkpoint "
            "is named in a warning and the newest intact one is used, unless a step was asked for by number. "
            "Ctrl-C or SIGTERM stops within seconds (exit 130 / 143), keeps the checkpoints already written "
            "(--resume continues from the last), and a fresh run stopped before its first checkpoint leaves "
            "nothing behind. See docs/training.md."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="JSON file of training options; flags override it")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + _flag(f.name)
        # Defaults are SUPPRESSed so that only flags given override --config; the help names the dataclass's.
        kwargs: dict[str, Any] = {"help": _help_with_default(f), "default": argparse.SUPPRESS, "dest": f.name}
        if _field_type(f) is bool or isinstance(f.default, bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = _field_type(f)
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(name, **kwargs)
    return parser


def load_config_file(path: str, in_memory_data: bool = False) -> dict[str, Any]:
    """The training options of a --config file or a run's config.json.

    A run that trained on a caller's in-memory arrays (`train(train_data=...)`) names no dataset the
    command can load: its options serve only with `in_memory_data` (the caller passes the data again).
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a JSON object of training options")
    if isinstance(data.get("data"), dict) and data["data"].get("kind") == IN_MEMORY_KIND and not in_memory_data:
        raise ConfigError(f"{path}: this run trained on in-memory data (vit_jax.training.train(train_data=...)); "
                          "continue or evaluate it from Python with the same train_data")
    # A run's resolved config.json holds the training options under "train".
    return dict(data.get("train", data))


def _file_value(f: dataclasses.Field, value: Any, source: str) -> Any:
    """A config file's `value` for field `f`, as its flag would have parsed it, or a one-line ConfigError."""
    kind = _field_type(f)
    if value is None and f.default is None:
        return None
    wrong = ConfigError(f"{source}: \"{f.name}\" is {json.dumps(value)}; expected {_KIND_NAMES.get(kind, 'a value')}, "
                        f"as --{_flag(f.name)} takes")
    if kind is bool or isinstance(f.default, bool):
        if not isinstance(value, bool):
            raise wrong
        return value
    if isinstance(value, bool):  # JSON true is not the number 1
        raise wrong
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise wrong
        return value
    if kind is float:
        if not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if kind is stage_units:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        if not isinstance(value, str):
            raise wrong
        try:
            return stage_units(value)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{source}: \"{f.name}\": {error}") from None
    if not isinstance(value, str):
        raise wrong
    return value


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               stage_units: "a list of integers or a string such as '3,4,9'"}


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from `values` (a config file's, or flags already parsed): each checked as its flag would be."""
    hints = unknown_field_hints(TrainConfig, values)
    if hints:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(hints)}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: _file_value(fields[name], value, source) for name, value in values.items()})


def parse_args(argv: list[str] | None, prog: str = "train.py") -> TrainConfig:
    """Command line -> TrainConfig (argparse exits with status 2 on an unknown flag)."""
    args = vars(build_parser(prog).parse_args(argv))
    config_path = args.pop("config", None)
    if config_path is None and (args.get("resume") or args.get("eval_only")) and args.get("workdir"):
        # Continuing or evaluating a run: its own resolved config is the base.
        run_config = os.path.join(args["workdir"], RUN_CONFIG_FILE)
        if os.path.exists(run_config):
            config_path = run_config
    values = load_config_file(config_path) if config_path else {}
    values.update(args)
    return config_from_dict(values, source=config_path or "flags")
