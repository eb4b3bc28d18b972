"""Per-device memory of sharded training from `train.py --dry-run`, as the table in docs/training.md.

    python -m benchmarks.memory_table --out /tmp/memtable             # B/16 .. G/14 on 1, 8 and 64 fake CPU devices
    python -m benchmarks.memory_table --presets B/16 --devices 1 8 --out /tmp/m

Compile only: each device count is one process with that many fake CPU
devices (XLA_FLAGS), running the dry run of every preset with and without
--remat (fsdp over all devices, --scan, bf16 compute, a fixed batch per
device). Each run's memory.json lands in OUT/<preset>-<devices>-<remat>/;
the table goes to OUT/table.md and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from vit_jax.help_format import DefaultsHelpFormatter

PRESETS = ("ViT-B_16", "ViT-L_16", "ViT-H_14", "ViT-g_14", "ViT-G_14")
DEVICE_COUNTS = (1, 8, 64)
CAPACITIES_GIB = (16, 80, 141)
HEADROOM = 0.9  # of a device's memory usable by the program (runtime, allocator slack)
GIB = 2.0**30


def run_name(preset: str, devices: int, remat: bool) -> str:
    return f"{preset}-{devices}-{'remat' if remat else 'plain'}"


def worker(args: argparse.Namespace) -> int:
    """In a process with `args.worker` fake devices: the dry run of every preset, with and without remat."""
    from vit_jax.train_cli import main as train_main

    for preset in args.presets:
        for remat in (False, True):
            workdir = Path(args.out) / run_name(preset, args.worker, remat)
            argv = ["--model", preset, "--dry-run", "--mesh", "fsdp=-1", "--scan", "--dtype", "bfloat16",
                    "--batch-size", str(args.batch_per_device * args.worker), "--workdir", str(workdir),
                    "--remat" if remat else "--no-remat"]
            if train_main(argv) != 0:
                return 1
    return 0


def fits(peak: int) -> str:
    return " / ".join("yes" if peak <= HEADROOM * c * GIB else "no" for c in CAPACITIES_GIB)


def table(out: Path, presets: list[str], device_counts: list[int]) -> str:
    lines = ["| model | devices | params | optimizer state | XLA temporaries | temporaries, remat | peak | "
             "peak, remat | fits 16 / 80 / 141 GiB | fits, remat |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for preset in presets:
        for devices in device_counts:
            plain, remat = (json.loads((out / run_name(preset, devices, r) / "memory.json").read_text())
                            for r in (False, True))
            peaks = [r["xla_per_device_bytes"]["peak_estimate"] for r in (plain, remat)]
            cells = [plain["params_bytes_per_device"], plain["opt_state_bytes_per_device"],
                     plain["xla_per_device_bytes"]["temp"], remat["xla_per_device_bytes"]["temp"], *peaks]
            lines.append(f"| {preset} | {devices} | " + " | ".join(f"{c / GIB:.2f}" for c in cells)
                         + f" | {fits(peaks[0])} | {fits(peaks[1])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_table", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for each dry run's memory.json and table.md")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), help="model presets")
    parser.add_argument("--devices", nargs="+", type=int, default=list(DEVICE_COUNTS), help="fake device counts")
    parser.add_argument("--batch-per-device", type=int, default=32, help="images per device per step")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: one device count's runs
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    out = Path(args.out)
    for devices in args.devices:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        command = [sys.executable, "-m", "benchmarks.memory_table", "--worker", str(devices), "--out", str(out),
                   "--batch-per-device", str(args.batch_per_device), "--presets", *args.presets]
        if subprocess.run(command, env=env).returncode != 0:
            print(f"the dry runs on {devices} devices failed", file=sys.stderr)
            return 1
    text = table(out, args.presets, args.devices)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
