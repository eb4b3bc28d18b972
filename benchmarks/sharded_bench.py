"""Speed and memory of train.py's sharded train step on every device of this machine.

    python -m benchmarks.sharded_bench --json fsdp.json                           # ViT-L/16 bf16, fsdp over all devices
    python -m benchmarks.sharded_bench --model ViT-testing --batch-per-device 2 --steps 2 --json /tmp/f.json   # CI

The run is set up exactly as `train.py` sets it up (the same flags: model,
`--mesh`, `--dtype`, `--remat`, `--scan`, ...; the digits give the class
count), then fed a fixed synthetic batch so that input decoding is not what
is timed. Reports images/s over `--steps` steps after one warm-up step, XLA's
compiled per-device memory figures (as `--dry-run` gives them) and, where the
backend keeps them (GPU, TPU), each device's measured peak bytes in use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from benchmarks.model_bench import _peak_rss_mb, _reset_peak_rss, _rss_mb
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.training.config import parse_args
from vit_jax.training.dry_run import measure
from vit_jax.training.setup import build_train_step, prepare


def synthetic_batch(run) -> dict[str, np.ndarray]:
    """This process's rows of one global batch: random images and labels, fixed by seed 0."""
    rng = np.random.default_rng(0)
    rows = run.parallel.process_batch_size
    height, width = run.model.image_hw
    return {"image": rng.standard_normal((rows, height, width, run.model.num_channels), np.float32),
            "label": rng.integers(0, run.model.num_classes, rows).astype(np.int32)}


def bench(train_argv: list[str], steps: int) -> dict:
    import jax

    run = prepare(parse_args(train_argv))
    train_step = build_train_step(run)
    report = measure(run, train_step)  # XLA's per-device figures for this very program
    before = _rss_mb()
    state = run.parallel.put_state(run.host_state)
    batch = run.parallel.put_batch(synthetic_batch(run))
    jax.block_until_ready((state, batch))
    placed = _rss_mb() - before
    state, metrics = train_step(state, batch)  # warm-up (compiles)
    jax.block_until_ready(metrics)
    _reset_peak_rss()
    before_steps = _rss_mb()
    started = time.perf_counter()
    for _ in range(steps):
        state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - started
    # On CPU every fake device lives in this process: its memory is what they all hold.
    report["host_rss_mib"] = {"placed_state_and_batch": placed, "step_peak_over_start": _peak_rss_mb() - before_steps}
    report["images_per_s"] = run.config.batch_size * steps / seconds
    report["step_seconds"] = seconds / steps
    report["loss"] = run.parallel.host_metrics(metrics)["loss"]
    peaks = [(device.memory_stats() or {}).get("peak_bytes_in_use") for device in jax.local_devices()]
    report["measured_peak_bytes_per_device"] = peaks if all(p is not None for p in peaks) else None
    report["device_kind"] = jax.devices()[0].device_kind
    return report


def summary(report: dict) -> str:
    mesh = ",".join(f"{axis}={size}" for axis, size in report["mesh"].items())
    peaks = report["measured_peak_bytes_per_device"]
    measured = f", measured peak {max(peaks) / 2**30:.2f} GiB/device" if peaks else ""
    estimate = report["xla_per_device_bytes"]["peak_estimate"] / 2**30
    return (f"{report['model']} {report['dtype']} train, mesh {mesh} on {report['devices']} x {report['device_kind']}: "
            f"{report['images_per_s']:.0f} img/s; XLA estimate {estimate:.2f} GiB/device{measured}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sharded_bench", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--model", default="ViT-L_16", help="model preset")
    parser.add_argument("--mesh", default="fsdp=-1", help="train.py --mesh")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
    parser.add_argument("--batch-per-device", type=int, default=32, help="images per device per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
    parser.add_argument("--json", help="write the report here")
    args, train_flags = parser.parse_known_args(argv)
    import jax

    batch = args.batch_per_device * jax.device_count()
    train_argv = ["--model", args.model, "--mesh", args.mesh, "--dtype", args.dtype, "--batch-size", str(batch),
                  "--no-progress", *train_flags]
    report = bench(train_argv, args.steps)
    print(summary(report))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
