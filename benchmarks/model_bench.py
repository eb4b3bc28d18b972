"""Side-by-side speed of vit_jax (jit) and the PyTorch twin (eager, torch.compile).

    python -m benchmarks.model_bench                       # ViT-Ti/16 and ViT-S/16, batch 32, 224 px
    python -m benchmarks.model_bench --presets ViT-B_16 --batch 32 --memory --json bench.json

For each preset and mode (inference; train step = forward + backward + AdamW
update) every backend runs the same config, weights and batch with the same
thread count. Warm-up calls are excluded; the backends are timed round-robin
(`--repeats` rounds) so that machine noise hits them alike, and medians are
reported with the JAX/torch-eager and JAX/torch.compile speed ratios. FLOPs
are counted from the config (vit_jax.flops; attention included). `--memory`
measures the peak resident memory of one train step per backend, each in a
fresh process (peak RSS minus RSS after imports).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from benchmarks.host_memory import malloc_library
from vit_jax.config import ATTENTION_IMPLS, KERNELS, REMAT_POLICIES
from vit_jax.cpu import onednn as cpu_matmuls
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.kernels import resolve_kernels

# Peak dense matmul FLOP/s by (device kind substring, dtype), for MFU on accelerators.
PEAK_FLOPS = {
    ("H100", "bfloat16"): 989e12,
    ("H200", "bfloat16"): 989e12,
    ("A100", "bfloat16"): 312e12,
    ("H100", "float32"): 67e12,
    ("H200", "float32"): 67e12,
    ("A100", "float32"): 19.5e12,
}


@dataclasses.dataclass
class Runner:
    """One backend's timed call for one (preset, mode)."""

    name: str
    call: Callable[[], None]
    compile_s: float | None = None
    times: list[float] = dataclasses.field(default_factory=list)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (VmHWM) so imports do not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- JAX ----------------------------------------------------------------------


def _our_apply(config) -> Callable:
    from vit_jax.model import VisionTransformer

    model = VisionTransformer(config)
    return lambda params, images, train=False: model.apply({"params": params}, images, train=train)


def _jax_train_step(config, apply: Callable | None = None):
    """(optimizer, step): one AdamW step of the Flax model, pure, for `jax.jit`."""
    import jax
    import jax.numpy as jnp
    import optax

    apply = apply or _our_apply(config)
    tx = optax.adamw(1e-4, weight_decay=0.05)

    def step(state, x, y):
        def loss_fn(p):
            logits = apply(p, x, train=True).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    return tx, step


def _jax_runners(config, batch: int, modes: list[str], seed: int, name: str = "jax",
                 apply: Callable | None = None) -> list[Runner]:
    """Timed calls of `apply` (default: our model for `config`) with our params for `config`."""
    import jax
    import jax.numpy as jnp

    from vit_jax.model import init_params

    apply = apply or _our_apply(config)
    params = init_params(config, seed)
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.uniform(-1, 1, (batch, *config.image_hw, config.num_channels)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, max(config.num_classes, 1), batch), jnp.int32)
    runners = []
    if "infer" in modes:
        t0 = time.perf_counter()
        infer = jax.jit(lambda p, x: apply(p, x)).lower(params, images).compile()
        compile_s = time.perf_counter() - t0
        runners.append(Runner(name, lambda: infer(params, images).block_until_ready(), compile_s))
    if "train" in modes:
        tx, step = _jax_train_step(config, apply)
        state = {"params": params, "opt": tx.init(params)}
        t0 = time.perf_counter()
        train = jax.jit(step, donate_argnums=0).lower(state, images, labels).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}  # donated on every call, so no copy is kept alive
        del state

        def call():
            holder["state"], loss = train(holder["state"], images, labels)
            loss.block_until_ready()

        runners.append(Runner(name, call, compile_s))
    return runners


def train_compile_seconds(config, batch: int) -> float:
    """Seconds to compile one train step, on abstract shapes (no weights allocated)."""
    import jax
    import jax.numpy as jnp

    from vit_jax.model import param_shapes

    tx, step = _jax_train_step(config)
    params = param_shapes(config)
    state = {"params": params, "opt": jax.eval_shape(tx.init, params)}
    images = jax.ShapeDtypeStruct((batch, *config.image_hw, config.num_channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    t0 = time.perf_counter()
    jax.jit(step, donate_argnums=0).lower(state, images, labels).compile()
    return time.perf_counter() - t0


def compile_scaling(preset: str, depths: list[int], batch: int, overrides: dict) -> list[dict]:
    """Train-step compile time against depth, unrolled and scanned."""
    from vit_jax.config import get_config

    rows = []
    for scan in (False, True):
        for depth in depths:
            config = get_config(preset, **{**overrides, "num_layers": depth, "scan": scan})
            seconds = train_compile_seconds(config, batch)
            rows.append({"preset": preset, "num_layers": depth, "scan": scan, "compile_s": seconds})
            print(f"compile {preset} {depth:>3} layers {'scan    ' if scan else 'unrolled'} {seconds:6.1f} s",
                  flush=True)
    return rows


# -- PyTorch --------------------------------------------------------------------


def _torch_runners(config, batch: int, modes: list[str], seed: int, compiled: bool) -> list[Runner]:
    import torch

    from vit_torch_ref import VisionTransformer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.uniform(-1, 1, (batch, config.num_channels, *config.image_hw)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, max(config.num_classes, 1), batch))
    name = "torch.compile" if compiled else "torch"
    runners = []
    if "infer" in modes:
        model = VisionTransformer(config).eval()
        fn = torch.compile(model) if compiled else model

        def infer():
            with torch.inference_mode():
                fn(images)

        t0 = time.perf_counter()
        infer()  # torch.compile compiles on first call
        runners.append(Runner(name, infer, time.perf_counter() - t0 if compiled else None))
    if "train" in modes:
        model = VisionTransformer(config).train()
        fn = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

        def train():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(fn(images).float(), labels)
            loss.backward()
            opt.step()

        t0 = time.perf_counter()
        train()
        runners.append(Runner(name, train, time.perf_counter() - t0 if compiled else None))
    return runners


# -- memory probe (runs in a fresh process) ---------------------------------------


def _memory_probe(backend: str, preset: str, batch: int, overrides: dict) -> dict:
    """Peak RSS of two train steps over the RSS after imports.

    The high-water mark is reset after the model, optimizer state and (for JAX)
    the compiled step exist, so compilation's transient memory is not counted;
    everything a step holds live (weights, optimizer state, activations,
    workspace) is.
    """
    # Both frameworks imported before the baseline, whichever one is measured.
    import flax.linen  # noqa: F401
    import jax  # noqa: F401
    import optax  # noqa: F401
    import torch  # noqa: F401

    import vit_jax.model  # noqa: F401
    import vit_torch_ref  # noqa: F401
    from vit_jax.config import get_config

    config = get_config(preset, **overrides)
    baseline = _rss_mb()
    if backend == "jax":
        (runner,) = _jax_runners(config, batch, ["train"], 0)
    else:
        (runner,) = _torch_runners(config, batch, ["train"], 0, compiled=False)
    setup_peak = _peak_rss_mb()
    _reset_peak_rss()
    runner.call()
    runner.call()
    peak = _peak_rss_mb()
    return {
        "backend": backend,
        "baseline_mb": baseline,
        "setup_peak_mb": setup_peak,
        "peak_mb": peak,
        "growth_mb": peak - baseline,
    }


def measure_memory(preset: str, batch: int, overrides: dict) -> dict[str, dict]:
    results = {}
    for backend in ("jax", "torch"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.model_bench", "--memory-probe", backend, preset, str(batch),
             json.dumps(overrides)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"memory probe for {backend} {preset} failed:\n{out.stderr[-2000:]}")
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# -- the benchmark ------------------------------------------------------------------


def _cpu_model() -> str:
    """The host CPU's name (results differ a lot between CPU families)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _device_info() -> dict:
    import jax
    import torch

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "jax_platform": dev.platform,
        "jax_device_kind": dev.device_kind,
        "jax_devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        # malloc decides whether XLA:CPU page-faults its step buffers on every call (benchmarks/host_memory.py)
        "malloc": malloc_library(),
        # which library runs XLA:CPU's products (vit_jax/cpu/onednn.py)
        "xla_cpu_matmuls": "onednn" if cpu_matmuls.onednn_matmuls_enabled() else "xla",
        "torch_threads": torch.get_num_threads(),
    }


def _mfu(flops_per_s: float, device_kind: str, dtype: str) -> float | None:
    for (kind, peak_dtype), peak in PEAK_FLOPS.items():
        if kind in device_kind and peak_dtype == dtype:
            return flops_per_s / peak
    return None


def config_overrides(args) -> dict:
    """ViTConfig fields set from the command line (the same for every backend)."""
    return {
        "image_size": args.image_size,
        "dtype": args.dtype,
        "attention_impl": args.attention_impl,
        "scan": args.scan,
        "remat": args.remat,
        "remat_policy": args.remat_policy,
        "recompute_gelu": args.recompute_gelu,
        "kernels": resolve_kernels(args.kernels),
    }


def _comparison_runners(config, args, mode: str) -> list[Runner]:
    """The same model with the other kernel set (--ab-kernels) and Google's official model (--google-vit)."""
    runners = []
    if args.ab_kernels:
        other = "reference" if config.kernels == "cpu" else "cpu"
        runners += _jax_runners(config.replace(kernels=other, recompute_gelu=False), args.batch, [mode], args.seed,
                                f"jax:{other}")
    if args.google_vit:
        from benchmarks.google_vit import official_apply

        runners += _jax_runners(config, args.batch, [mode], args.seed, "google",
                                official_apply(args.google_vit, config))
    return runners


def run(args) -> dict:
    import torch

    from vit_jax.config import get_config
    from vit_jax.flops import forward_flops, train_step_flops

    torch.set_num_threads(args.threads)
    info = _device_info()
    rows = []
    for preset in args.presets:
        config = get_config(preset, **config_overrides(args))
        for mode in args.modes:
            runners = _jax_runners(config, args.batch, [mode], args.seed)
            runners += _comparison_runners(config, args, mode)
            runners += _torch_runners(config, args.batch, [mode], args.seed, compiled=False)
            if args.torch_compile:
                runners += _torch_runners(config, args.batch, [mode], args.seed, compiled=True)
            for r in runners:  # warm-up, excluded
                for _ in range(args.warmup):
                    r.call()
            for _ in range(args.repeats):
                for r in runners:
                    t0 = time.perf_counter()
                    r.call()
                    r.times.append(time.perf_counter() - t0)
            flops = (forward_flops if mode == "infer" else train_step_flops)(config) * args.batch
            medians = {r.name: statistics.median(r.times) for r in runners}
            row = {
                "preset": preset,
                "mode": mode,
                "batch": args.batch,
                "dtype": args.dtype,
                "kernels": config.kernels,
                "gflop_per_image": flops / args.batch / 1e9,
                "backends": {
                    r.name: {
                        "median_s": medians[r.name],
                        "images_per_s": args.batch / medians[r.name],
                        "gflop_per_s": flops / medians[r.name] / 1e9,
                        "mfu": (_mfu(flops / medians[r.name], info["jax_device_kind"], args.dtype)
                                if r.name == "jax" else None),
                        "compile_s": r.compile_s,
                        "times_s": r.times,
                    }
                    for r in runners
                },
            }
            row["jax_over_torch"] = medians["torch"] / medians["jax"]
            # speed of ours over each comparison model, timed round-robin in this process
            row["jax_over"] = {r.name: medians[r.name] / medians["jax"] for r in runners
                               if r.name not in ("jax", "torch", "torch.compile")}
            if "torch.compile" in medians:
                row["jax_over_torch_compile"] = medians["torch.compile"] / medians["jax"]
            rows.append(row)
            print(_format_row(row), flush=True)
    result = {"device": info, "args": vars(args), "rows": rows}
    if args.compile_depths:
        result["compile_scaling"] = compile_scaling(
            args.compile_preset, args.compile_depths, args.batch, config_overrides(args)
        )
    if args.memory:
        result["memory"] = {
            p: measure_memory(p, args.batch, config_overrides(args)) for p in args.memory_presets or args.presets
        }
    return result


def _format_row(row: dict) -> str:
    b = row["backends"]
    parts = [f"{row['preset']:<10} {row['mode']:<6} b{row['batch']:<4}"]
    for name in ("jax", "torch", "torch.compile"):
        if name in b:
            compile_s = b[name]["compile_s"]
            parts.append(
                f"{name} {b[name]['images_per_s']:8.1f} img/s ({b[name]['gflop_per_s']:6.1f} GFLOP/s"
                + (f", compile {compile_s:5.1f}s" if compile_s is not None else "")
                + ")"
            )
    parts.append(f"jax/torch {row['jax_over_torch']:.2f}x")
    if "jax_over_torch_compile" in row:
        parts.append(f"jax/compile {row['jax_over_torch_compile']:.2f}x")
    parts += [f"jax/{name} {ratio:.3f}x" for name, ratio in row.get("jax_over", {}).items()]
    return " | ".join(parts)


def format_table(result: dict) -> str:
    d = result["device"]
    lines = [
        f"{d['jax_platform']} ({d['jax_device_kind']}, {d['jax_devices']} device(s)), host CPU {d['cpu_model']}, "
        f"{d['cpu_count']} cores, malloc: {d['malloc']}, XLA:CPU matmuls: {d['xla_cpu_matmuls']}; jax {d['jax']}, "
        f"torch {d['torch']} with {d['torch_threads']} threads",
        "",
        "| preset | mode | batch | JAX img/s | torch eager img/s | torch.compile img/s | JAX/eager | JAX/compile | "
        "JAX GFLOP/s | JAX compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        b = row["backends"]
        compiled = b.get("torch.compile")
        cells = [
            row["preset"],
            row["mode"],
            str(row["batch"]),
            f"{b['jax']['images_per_s']:.1f}",
            f"{b['torch']['images_per_s']:.1f}",
            f"{compiled['images_per_s']:.1f}" if compiled else "-",
            f"{row['jax_over_torch']:.2f}x",
            f"{row['jax_over_torch_compile']:.2f}x" if compiled else "-",
            f"{b['jax']['gflop_per_s']:.1f}",
            f"{b['jax']['compile_s']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    comparisons = [(row, name, ratio) for row in result["rows"] for name, ratio in row.get("jax_over", {}).items()]
    if comparisons:
        lines += ["",
                  f"| preset | mode | ours ({result['rows'][0]['kernels']} kernels) over | ratio (>1: ours faster) |",
                  "|---|---|---|---|"]
        lines += [f"| {row['preset']} | {row['mode']} | {name} | {ratio:.3f}x |" for row, name, ratio in comparisons]
    if "compile_scaling" in result:
        lines += ["", "| preset | layers | unrolled compile s | scanned compile s |", "|---|---|---|---|"]
        by_depth = {}
        for r in result["compile_scaling"]:
            by_depth.setdefault(r["num_layers"], {})[r["scan"]] = r["compile_s"]
        for depth, times in sorted(by_depth.items()):
            lines.append(f"| {result['compile_scaling'][0]['preset']} | {depth} | {times[False]:.1f} | "
                         f"{times[True]:.1f} |")
    for preset, mem in result.get("memory", {}).items():
        lines.append("")
        lines.append(
            f"peak memory, {preset} train step b{result['args']['batch']}: "
            f"JAX {mem['jax']['growth_mb']:.0f} MiB, torch {mem['torch']['growth_mb']:.0f} MiB (RSS growth over "
            "imports)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_bench", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--presets", type=lambda s: s.split(","), default=["ViT-Ti_16", "ViT-S_16"],
                        help="comma-separated preset names (default: ViT-Ti_16,ViT-S_16)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["infer", "train"],
                        help="comma-separated: infer, train (default: both)")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--image-size", type=int, default=224, help="input resolution in pixels")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--attention-impl", default="auto", choices=list(ATTENTION_IMPLS), help="Flax attention core")
    parser.add_argument("--kernels", default="auto", choices=["auto", *KERNELS],
                        help="Flax model's operations: reference, cpu, or auto (cpu on a CPU backend)")
    parser.add_argument("--ab-kernels", action="store_true",
                        help="also time the other kernel set, round-robin in this process (an A/B of the two)")
    parser.add_argument("--google-vit", metavar="DIR",
                        help="also time Google's official Flax ViT from this vision_transformer checkout (same params)")
    parser.add_argument("--scan", action="store_true", help="Flax: nn.scan over blocks")
    parser.add_argument("--recompute-gelu", action="store_true",
                        help="Flax: the MLP's backward recomputes GELU's output (less memory)")
    parser.add_argument("--remat", action="store_true", help="Flax: rematerialise blocks in backward")
    parser.add_argument("--remat-policy", default="nothing_saveable", choices=list(REMAT_POLICIES),
                        help="Flax, with --remat: what each block keeps for the backward pass")
    parser.add_argument("--cpu-matmuls", default="xla", choices=list(cpu_matmuls.CHOICES),
                        help="XLA:CPU products: XLA's own or oneDNN's (vit_jax/cpu/onednn.py)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per backend")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: every core; XLA uses all cores)")
    parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                        help="skip the torch.compile backend")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory of a train step per backend")
    parser.add_argument("--memory-presets", type=lambda s: s.split(","), default=None,
                        help="presets for --memory (default: --presets)")
    parser.add_argument("--compile-depths", type=lambda s: [int(d) for d in s.split(",")], default=None,
                        help="also time train-step compilation at these depths, unrolled and scanned (e.g. 8,16,32)")
    parser.add_argument("--compile-preset", default="ViT-H_14", help="preset for --compile-depths (default ViT-H_14)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    parser.add_argument("--json", help="write the full results (every timing) to this file")
    parser.add_argument("--memory-probe", nargs=4, metavar=("BACKEND", "PRESET", "BATCH", "OVERRIDES_JSON"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        backend, preset, batch, overrides = args.memory_probe
        print(json.dumps(_memory_probe(backend, preset, int(batch), json.loads(overrides))))
        return 0
    from vit_jax.config import ConfigError, get_config

    try:
        cpu_matmuls.select(args.cpu_matmuls)  # XLA_FLAGS, inherited by the memory probes
    except RuntimeError as e:
        parser.error(str(e))
    bad_modes = sorted(set(args.modes) - {"infer", "train"})
    if bad_modes:
        parser.error(f"unknown mode(s) {bad_modes}; expected infer and/or train")
    if args.batch <= 0 or args.repeats <= 0:
        parser.error("--batch and --repeats must be positive")
    try:
        for preset in args.presets + (args.memory_presets or []):
            get_config(preset, **config_overrides(args))
    except ConfigError as e:
        parser.error(str(e))
    result = run(args)
    print()
    print(format_table(result))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
