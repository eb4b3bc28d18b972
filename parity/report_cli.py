"""`python -m parity report`: layer-by-layer JAX vs PyTorch parity report with a CI exit code.

Exit status: 0 when every judged row is within tolerance, 1 when any is not,
2 on bad usage or unusable input (unknown preset, unreadable checkpoint or
image folder, ...), reported in one line without a stack trace.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import sys
import time
from typing import Any

import jax
import numpy as np
import torch

from parity import harness, inputs, judge, passes, source_report
from parity.render import write_report
from parity.tolerances import RELATIVE_ERROR_DEFINITION, RULE, ZERO_GRADIENT_FRACTION, tolerances_for
from vit_jax.config import KERNELS, ConfigError, ViTConfig, get_config, parse_assignment
from vit_jax.formats.base import ConversionError, file_above
from vit_jax.formats.hub import is_hub_name
from vit_jax.formats.mapping import MappingError
from vit_jax.formats.stream import open_flax_params_lazy
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.kernels import resolve_kernels
from vit_jax.model import init_params
from vit_jax.resnet import open_unit_branches

EXAMPLES = """examples:
  python -m parity report --config ViT-B_16 --backward --out reports/b16
  python -m parity report --config ViT-S_16 --dtype bfloat16 --optimizer-step --steps 10 --out reports/s16-bf16
  python -m parity report --checkpoint ViT-B_16.npz --images photos/ --out reports/ckpt
  python -m parity report --config ViT-testing --set classifier=gap --set gelu=exact --out reports/gap
"""


class UsageError(ValueError):
    """Arguments that parse but do not make sense together."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parity report",
        description="Run the Flax ViT and its PyTorch twin on the same weights and inputs and report, layer by "
        "layer, how far apart they are (and how far each is from a float64 run).",
        epilog=EXAMPLES,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--config",
                        help="preset name (ViT-B_16, B/16, ViT-testing, ...) or a ViTConfig .json file: random "
                        "weights; with --checkpoint, the config that fills what the tensors do not show (GELU form, "
                        "...)")
    parser.add_argument("--checkpoint", help="weights in any format vit_jax.load_pretrained reads (Google .npz, Flax, "
                        "timm/HF .safetensors or .pth, ...); its config is inferred from the tensors")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field (JSON value, e.g. --set num_layers=2 --set gelu=exact); "
                             "repeatable; "
                             "with --checkpoint, states what the tensors do not show (a vit-pytorch file's num_heads)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype of both models (params stay float32)")
    parser.add_argument("--kernels", choices=("auto", *KERNELS), default="auto",
                        help="how the Flax model's operations run: reference, cpu, or auto (cpu on a CPU backend); "
                             "the same function either way, so the report must pass for both")
    parser.add_argument("--batch", type=int,
                        help="images per batch (default 2; with --images, all images in the folder)")
    parser.add_argument("--images", help="folder of images to decode, resize and normalise instead of random pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights, pixels and labels (default 0)")
    parser.add_argument("--backward", action="store_true", help="compare the gradient of every parameter")
    parser.add_argument("--optimizer-step", action="store_true",
                        help="compare one AdamW step (optax vs torch.optim) and the loss curves of --steps steps; "
                             "implies --backward")
    parser.add_argument("--steps", type=int, default=5,
                        help="AdamW steps on the report's batch (repeated) for the loss curves (default 5)")
    parser.add_argument("--lr", type=float, default=harness.AdamWSettings.learning_rate, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=harness.AdamWSettings.weight_decay,
                        help="AdamW decoupled weight decay")
    parser.add_argument("--against-source", action="store_true",
                        help="with --checkpoint: the PyTorch side is the library the checkpoint came from (timm's or "
                             "transformers' own model, loaded strictly), not the twin; layers it does not expose are "
                             "listed as not compared; float32, forward and --backward")
    parser.add_argument("--out", required=True,
                        help="output folder for report.json, report.md, report.html and the plots")
    return parser


def _parse_override(text: str) -> tuple[str, Any]:
    try:
        return parse_assignment(text)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _check_args(args: argparse.Namespace) -> None:
    if not args.config and not args.checkpoint:
        raise UsageError("give --config NAME (random weights) or --checkpoint PATH")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.lr <= 0 or args.weight_decay < 0:
        raise UsageError(f"--lr must be > 0 and --weight-decay >= 0, got {args.lr} and {args.weight_decay}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out!r} exists and is not a directory")
    if file_above(args.out) is not None:
        raise UsageError(f"--out {args.out!r}: {file_above(args.out)} is a file, not a directory")
    if args.against_source and not args.checkpoint:
        raise UsageError("--against-source needs --checkpoint (the source library's model of it is compared)")
    if args.against_source and (args.optimizer_step or args.dtype != "float32"):
        raise UsageError("--against-source compares float32 forward and --backward; drop --optimizer-step and --dtype")
    if args.checkpoint and not is_hub_name(args.checkpoint) and not os.path.exists(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint!r} does not exist")


UNIT_BRANCH_SCALE = 0.1  # random hybrid weights: the last GroupNorm scale of every ResNet unit


def load_model(args: argparse.Namespace) -> tuple[ViTConfig, harness.Master, str]:
    """(config in the requested dtype, float32 Flax params by per-block path, where the weights came from).

    A checkpoint's params are a lazy mapping: each tensor is read from the file when its group runs
    (after one pass that reads each once to refuse bad ones), so the model is never held whole.
    """
    overrides = dict(_parse_override(o) for o in args.overrides)
    if args.checkpoint:
        # --set states fields the tensors may not show (a vit-pytorch file's heads): read with them.
        config, master = open_flax_params_lazy(args.checkpoint, config=args.config, overrides=overrides,
                                               dtype=np.float32)
        source = f"checkpoint {args.checkpoint}"
    else:
        if args.config.endswith(".json"):
            if not os.path.isfile(args.config):
                raise UsageError(f"--config {args.config!r} does not exist")
            config = ViTConfig.from_json(args.config).replace(**overrides)
        else:
            config = get_config(args.config, **overrides)
        # A zero-initialised head would zero every other gradient; initialisation
        # does not change the function, so the random weights use a real head.
        init_config = config.replace(dtype="float32", param_dtype="float32", head_zero_init=False)
        params = init_params(init_config, args.seed)
        source = (f"random, init_params(seed={args.seed}) with a lecun-normal head (not zeros) so every parameter "
                  f"gets a gradient")
        if config.is_hybrid:
            # Likewise each ResNet unit's last GroupNorm, whose zero scale cuts its branch off. A small
            # scale keeps the stem near its initial regime: at 1 the random R50 stem is float32-ill-
            # conditioned (each framework ~4e-5 from its own float64 run), at 0.1 it is ~1e-6.
            params = open_unit_branches(params, UNIT_BRANCH_SCALE)
            source += f"; ResNet units' last GroupNorm scales at {UNIT_BRANCH_SCALE} (not zeros)"
        master = harness.flat_per_block(harness.cast_params(params, np.float32))
    kernels = resolve_kernels(args.kernels)
    config = config.replace(kernels=kernels, recompute_gelu=config.recompute_gelu and kernels == "cpu")
    return config.replace(dtype=args.dtype, param_dtype="float32"), master, source


def load_inputs(args: argparse.Namespace, config: ViTConfig, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if args.images:
        paths = inputs.list_images(args.images)
        batch = args.batch or len(paths)
        if batch > len(paths):
            raise UsageError(f"--batch {batch} but {args.images!r} holds only {len(paths)} images")
        images = inputs.load_images(paths[:batch], config)
        return images, (f"{batch} images from {args.images} (decoded with PIL, bicubic resize to "
                        f"{config.image_hw[0]}x{config.image_hw[1]}, normalised with mean {config.pixel_mean} std "
                        f"{config.pixel_std})")
    batch = args.batch or 2
    images = inputs.random_images(config, batch, rng)
    return images, (f"{batch} random images (uniform [0, 1] pixels, normalised with mean {config.pixel_mean} "
                    f"std {config.pixel_std})")


def _devices() -> tuple[jax.Device, str]:
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return jax.devices()[0], torch_device


def _environment(jax_device: jax.Device, torch_device: str, dtype: str) -> dict[str, Any]:
    import flax
    import jaxlib
    import optax

    accelerator = jax_device.platform != "cpu" or torch_device != "cpu"
    if dtype == "float32":
        precision = ("float32 pinned to full precision on both sides: jax default_matmul_precision='highest', "
                     "torch.backends.cuda.matmul.allow_tf32=False, torch.backends.cudnn.allow_tf32=False"
                     + ("" if accelerator else " (CPU: already full float32, the pins change nothing)"))
    else:
        precision = ("bfloat16 compute on both sides, float32 parameters: Flax dtype=bfloat16, "
                     "the twin under torch.autocast(bfloat16); softmax in float32 on both sides")
    torch_name = torch.cuda.get_device_name(0) if torch_device == "cuda" else "cpu"
    return {
        "versions": {
            "python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
                     "torch": torch.__version__,
        },
        "jax_device": f"{jax_device.platform}:{jax_device.id} ({jax_device.device_kind})",
        "torch_device": torch_name,
        "precision": precision,
        "host": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
    }


SIDE_NAMES = ("jax", "torch", "jax float64", "torch float64")  # the order of every list of sides


def _sides(config: ViTConfig) -> list[harness.Side]:
    """The model under test in each framework, and each again in float64 on CPU: the rounding references."""
    jax_device, torch_device = _devices()
    config64, cpu = harness.float64_config(config), jax.devices("cpu")[0]
    return [harness.JaxSide(SIDE_NAMES[0], config, jax_device), harness.TorchSide(SIDE_NAMES[1], config, torch_device),
            harness.JaxSide(SIDE_NAMES[2], config64, cpu), harness.TorchSide(SIDE_NAMES[3], config64, "cpu")]


def _optimizer_info(settings: harness.AdamWSettings, steps: int) -> dict[str, Any]:
    return {
        "hyperparameters": {"lr": settings.learning_rate, "b1": settings.b1, "b2": settings.b2,
                            "eps": settings.eps, "weight_decay": settings.weight_decay},
        "steps": steps,
        "semantics": "Decoupled weight decay on every parameter on both sides (no mask on either): "
                     "p <- p - lr*(m_hat/(sqrt(v_hat)+eps) + wd*p); torch applies p *= 1 - lr*wd before "
                     "the Adam update, which is the same expression.",
    }


def _tolerance_info(tol) -> dict[str, Any]:
    return {
        "rule": RULE,
        "criteria": tol.as_dict(),
        "layer_bounds": {"max_rel_l2": tol.layer.max_rel_l2, "min_cosine": tol.layer.min_cosine},
        "relative_error": RELATIVE_ERROR_DEFINITION,
        "zero_gradient": (
            f"a parameter whose float64 gradient norm is below {ZERO_GRADIENT_FRACTION:g} x the typical gradient "
            "norm has zero gradient in exact arithmetic (e.g. the key bias: softmax ignores a common shift of "
            "the key logits, so it cannot change any output either); both sides then compute rounding noise (and "
            "AdamW turns it into a step of random sign), so its gradient and update rows are shown, not judged"
        ),
    }


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r["judged"]]
    worst, worst_ratio = {}, {}
    for section in judge.SECTIONS:
        in_section = [r for r in judged if r["section"] == section]
        if in_section:
            worst[section] = float(np.nanmax([r["rel_l2"] for r in in_section]))
            worst_ratio[section] = float(np.nanmax([r["rounding_ratio"] for r in in_section]))
    return {"judged": len(judged), "failed": sum(not r["passed"] for r in judged), "worst_rel_l2": worst,
            "worst_rounding_ratio": worst_ratio}


def judged_rows(args: argparse.Namespace, config: ViTConfig, master: harness.Master, images: np.ndarray,
                targets: np.ndarray, clock: dict) -> tuple[list[dict[str, Any]], set[str]]:
    """Every report row and the parameters whose exact gradient is zero."""
    tol = tolerances_for(config.dtype)
    backward = args.backward or args.optimizer_step
    settings = harness.AdamWSettings(learning_rate=args.lr, weight_decay=args.weight_decay)
    if args.against_source:
        rows, zero_grad, args.source_library = source_report.against_source_rows(
            args.checkpoint, config, master, images, targets, backward, clock)
        return rows, zero_grad
    sides = _sides(config)
    measured, losses = passes.compare(sides, master, config, images, targets, backward,
                                      settings if args.optimizer_step else None, clock)
    clock.update({side.name: side.seconds for side in sides})
    rows = judge.forward_rows(config, tol, measured["forward"])
    zero_grad = judge.zero_gradient_params(config, measured["gradients"]) if backward else set()
    if backward:
        rows += judge.gradient_rows(config, tol, measured["gradients"], zero_grad)
    if args.optimizer_step:
        rows += judge.update_rows(config, tol, measured["update"], zero_grad)
        curves = passes.loss_curves(sides, master, config, images, targets, settings, args.steps, losses, clock)
        rows += judge.loss_rows(tol, curves)
    return rows, zero_grad


def run_report(args: argparse.Namespace, config: ViTConfig, master: harness.Master, source: str,
               images: np.ndarray, input_text: str, rng: np.random.Generator) -> dict[str, Any]:
    backward = args.backward or args.optimizer_step
    targets = inputs.make_targets(config, images.shape[0], rng)
    pin = harness.full_float32_precision() if config.dtype == "float32" else contextlib.nullcontext()
    clock: dict[str, float] = {}
    with pin:
        rows, zero_grad = judged_rows(args, config, master, images, targets, clock)
    passed, first = judge.verdict(rows)
    settings = harness.AdamWSettings(learning_rate=args.lr, weight_decay=args.weight_decay)
    environment = _environment(*_devices(), config.dtype)
    library = getattr(args, "source_library", None)
    if library:
        name, version = library.split(" ", 1)
        environment["versions"][name] = version
    return {
        "against_source": library,
        "verdict": "pass" if passed else "fail",
        "first_failure": first,
        "summary": _summary(rows),
        "command": "python -m parity report " + " ".join(args.argv),
        "config": config.to_dict(),
        "dtype": config.dtype,
        "weights": source,
        "inputs": input_text,
        "loss_definition": harness.LOSS_DESCRIPTION if backward else None,
        "optimizer": _optimizer_info(settings, args.steps) if args.optimizer_step else None,
        "environment": environment,
        "zero_gradient_params": sorted(zero_grad),
        "tolerances": _tolerance_info(tolerances_for(config.dtype)),
        "timings_s": clock,
        "rows": rows,
    }


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the usage error (or the help)
        return int(exit_.code or 0)
    args.argv = argv
    # float64 reference runs need x64 in JAX; the context keeps it to this report
    # (float32 and bfloat16 runs state their dtypes explicitly throughout).
    with jax.enable_x64(True):
        try:
            _check_args(args)
            started = time.perf_counter()
            rng = np.random.default_rng(args.seed)
            if args.images:
                inputs.list_images(args.images)  # a bad folder fails before any model is built
            config, master, source = load_model(args)
            images, input_text = load_inputs(args, config, rng)
        except (UsageError, ConfigError, MappingError, inputs.InputError, OSError, ValueError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        setup_s, setup_rss = time.perf_counter() - started, peak_rss_bytes()
        try:
            report = run_report(args, config, master, source, images, input_text, rng)
        except (ConversionError, source_report.SourceUnavailable) as error:  # a checkpoint changed on disk, or
            # no library model of it can be built
            print(f"error: {error}", file=sys.stderr)
            return 2
        report["timings_s"] = {"weights and inputs": setup_s, **report["timings_s"]}
        report["timings_s"]["total"] = time.perf_counter() - started
        report["peak_rss_bytes"] = peak_rss_bytes()
        # random weights: their init and float32 copy; a checkpoint: its checking pass (no copy is kept)
        report["peak_rss_after_weights_bytes"] = setup_rss
    try:
        paths = write_report(report, args.out)
    except (ConversionError, OSError) as error:  # a device or FIFO in --out, a full disk
        print(f"error: {error}", file=sys.stderr)
        return 2
    worst = ", ".join(f"{k} {v:.2e}" for k, v in report["summary"]["worst_rel_l2"].items())
    ratios = ", ".join(f"{k} {v:.2f}" for k, v in report["summary"]["worst_rounding_ratio"].items())
    against = f" against {report['against_source']}" if report["against_source"] else ""
    print(f"{report['verdict'].upper()}: {report['config']['name']} {report['dtype']}{against}, "
          f"{report['summary']['failed']} of {report['summary']['judged']} judged rows out of tolerance; worst rel "
          f"L2: {worst}; "
          f"worst rounding ratio: {ratios}")
    if report["first_failure"]:
        failure = report["first_failure"]
        print(f"first failure: {failure['name']} ({failure['section']}): {failure['check']}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())
    print(f"peak RSS {report['peak_rss_bytes'] / 2**30:.2f} GiB ({setup_rss / 2**30:.2f} GiB once the weights "
          f"and inputs were ready); timings: {timings}")
    print(f"wrote {', '.join(paths)} ({time.perf_counter() - started:.1f}s)")
    return 0 if report["verdict"] == "pass" else 1
