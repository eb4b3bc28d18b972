"""The GPU checks in one go: GPU-marked tests, parity reports, ViT-B/16 bf16 training speed, sharded ViT-L/16.

    python -m benchmarks.gpu_check --out gpu_check            # on a machine with a GPU
    python -m benchmarks.gpu_check --dry-run --out /tmp/gc     # the same steps, tiny, on any machine (CI)

Steps, each a subprocess whose output lands in --out:
1. `pytest -m gpu`: library attention (cuDNN) against the explicit form,
   full-precision float32 against a float64 CPU run, bf16 training learns;
2. the parity report, float32 with full precision pinned on both sides
   (`parity report` does that on accelerators), forward, backward and an AdamW step;
3. the same report in bfloat16;
4. the bench: ViT-B/16 bf16 train step images/s and MFU, reference kernels
   (the goal this serves: >= 3,000 img/s on one H100/H200);
5. sharded training: ViT-L/16 bf16 with fsdp over every GPU (train.py's own
   step, batch 32 per GPU), images/s and memory per GPU, XLA's estimate beside
   the measured peak.
Exit status 0 when every step passed (the speed goal is reported, not enforced).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vit_jax.help_format import DefaultsHelpFormatter

GOAL_IMAGES_PER_S = 3000.0


def steps(out: Path, dry_run: bool) -> list[tuple[str, list[str]]]:
    python = sys.executable
    preset, batch = ("ViT-testing", "4") if dry_run else ("ViT-B_16", "256")
    report = [python, "-m", "parity", "report", "--config", preset, "--backward", "--optimizer-step", "--kernels",
              "reference"]
    bench = [python, "-m", "benchmarks.model_bench", "--presets", preset, "--modes", "train", "--dtype", "bfloat16",
             "--batch", batch, "--kernels", "reference", "--no-torch-compile", "--json", str(out / "bench.json")]
    bench += ["--image-size", "16", "--repeats", "1", "--warmup", "1"] if dry_run else ["--repeats", "10"]
    sharded = [python, "-m", "benchmarks.sharded_bench", "--json", str(out / "fsdp.json"), "--kernels", "reference"]
    sharded += ["--model", "ViT-testing", "--batch-per-device", "2", "--steps", "2"] if dry_run else []
    return [
        ("gpu tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]),
        ("parity float32", report + ["--out", str(out / "parity_float32")]),
        ("parity bfloat16", report + ["--dtype", "bfloat16", "--out", str(out / "parity_bfloat16")]),
        ("bench bf16 train", bench),
        ("fsdp L16 train", sharded),
    ]


def fsdp_summary(out: Path) -> str:
    try:
        report = json.loads((out / "fsdp.json").read_text())
    except (OSError, ValueError):
        return "fsdp: no results"
    peaks = report["measured_peak_bytes_per_device"]
    measured = f", measured peak {max(peaks) / 2**30:.2f} GiB per device" if peaks else ""
    return (f"{report['model']} bf16 fsdp over {report['devices']} device(s): {report['images_per_s']:.0f} img/s, "
            f"XLA estimate {report['xla_per_device_bytes']['peak_estimate'] / 2**30:.2f} GiB per device{measured}")


def speed_summary(out: Path) -> str:
    try:
        rows = json.loads((out / "bench.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return "bench: no results"
    jax_row = rows[0]["backends"]["jax"]
    mfu = f", MFU {jax_row['mfu']:.1%}" if jax_row.get("mfu") else ""
    verdict = "meets" if jax_row["images_per_s"] >= GOAL_IMAGES_PER_S else "below"
    return (f"{rows[0]['preset']} bf16 train: {jax_row['images_per_s']:.0f} img/s{mfu} "
            f"({verdict} the {GOAL_IMAGES_PER_S:.0f} img/s goal)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for each step's log, the reports and bench.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny configs, any backend: checks that the steps still run")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per step")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import jax

    backend = jax.default_backend()
    if backend != "gpu" and not args.dry_run:
        parser.error(f"JAX's backend is {backend!r}, not a GPU (install jax[cuda12]; or pass --dry-run)")
    env = dict(os.environ, JAX_PLATFORMS="" if backend == "gpu" else os.environ.get("JAX_PLATFORMS", ""))
    failed = []
    for name, command in steps(out, args.dry_run):
        log = out / (name.replace(" ", "_") + ".log")
        t0 = time.perf_counter()
        try:
            with open(log, "w") as f:
                code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env,
                                      timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        status = "ok" if code == 0 else f"FAILED ({code})"
        print(f"{name:<18} {status:<12} {time.perf_counter() - t0:7.1f} s   {log}", flush=True)
        if code != 0:
            failed.append(name)
    print(fsdp_summary(out))
    print(speed_summary(out))
    if failed:
        print(f"failed: {', '.join(failed)} (see the logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
