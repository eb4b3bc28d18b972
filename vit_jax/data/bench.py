"""Input-pipeline throughput: decode + augment images/s for one worker.

    python -m vit_jax.data.bench [--seconds 2] [--batch-size 128] [--workers 0 2]

Each row runs make_loader synchronously in this process (no background
threads or workers), so its images/s is what one Grain worker delivers.
`--workers` adds rows for the JPEG folder pipeline end to end with that many
worker processes. Data is synthesised in a temporary directory (no downloads).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from vit_jax.data.dataset import DatasetSpec, load_dataset
from vit_jax.data.errors import DataError
from vit_jax.data.loader import make_loader
from vit_jax.data.records import ARRAY_DEFAULTS, ArrayRecords

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _write_jpegs(root: str, count: int, size: tuple[int, int]) -> None:
    """Smooth random photos-like JPEGs (upsampled noise), two classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        folder = os.path.join(root, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def _rate(source, train: bool, image_size: int, batch_size: int, seconds: float, num_workers: int = 0) -> float:
    """Images per second over at least `seconds` after one warm-up batch."""
    loader = make_loader(
        source, batch_size, image_size, MEAN, STD, train=train, num_epochs=None if train else 1000,
        shard_index=0, shard_count=1, num_workers=num_workers, num_threads=0 if num_workers == 0 else 1,
    )
    try:
        next(loader)
        images, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            images += len(next(loader)["label"])
        return images / (time.perf_counter() - start)
    finally:
        loader.close()


def run(seconds: float, batch_size: int, workers: list[int]) -> list[tuple[str, str, str, str, float]]:
    rows = []
    digits = load_dataset(DatasetSpec(kind="digits", channels=3))
    rng = np.random.default_rng(0)
    cifar_like = ArrayRecords(
        rng.integers(0, 256, (2048, 32, 32, 3), dtype=np.uint8), np.arange(2048) % 10,
        num_classes=10, channels=3, what="uint8 32x32 arrays", defaults=ARRAY_DEFAULTS,
    )
    with tempfile.TemporaryDirectory() as tmp:
        _write_jpegs(tmp, 64, (375, 500))
        folder = load_dataset(DatasetSpec(kind="folder", path=tmp, val_path=tmp))
        cases = [
            ("digits, float in memory", digits.train, "8x8x1", 8, True),
            ("digits, float in memory", digits.train, "8x8x1", 16, True),
            ("digits, float in memory", digits.eval, "8x8x1", 8, False),
            ("CIFAR-like, uint8 in memory", cifar_like, "32x32x3", 32, True),
            ("CIFAR-like, uint8 in memory", cifar_like, "32x32x3", 224, True),
            ("JPEG folder", folder.train, "375x500x3", 224, True),
            ("JPEG folder", folder.eval, "375x500x3", 224, False),
        ]
        for name, source, stored, size, train in cases:
            batch = batch_size if size <= 32 else min(batch_size, 32)
            rate = _rate(source, train, size, batch, seconds)
            rows.append((name, stored, f"{size}x{size}", "train" if train else "eval", "1 (inline)", rate))
        for count in workers:
            if count > 0:
                rate = _rate(folder.train, True, 224, min(batch_size, 32), seconds, num_workers=count)
                rows.append(("JPEG folder", "375x500x3", "224x224", "train", f"{count} processes", rate))
    return rows


def format_table(rows) -> str:
    header = ("source", "stored", "output", "mode", "workers", "images/s")
    body = [(*row[:5], f"{row[5]:,.0f}") for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vit_jax.data.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window per row")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (capped at 32 for 224 px rows)")
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="worker-process counts to add rows for")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.batch_size <= 0 or any(w < 0 for w in args.workers):
        parser.error("--seconds and --batch-size must be positive, --workers non-negative")
    try:
        rows = run(args.seconds, args.batch_size, args.workers)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(rows))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f} while measuring")
    return 0


if __name__ == "__main__":
    sys.exit(main())
