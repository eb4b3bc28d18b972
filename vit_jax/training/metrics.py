"""Run metrics: JSON lines, TensorBoard event files and a PNG of the curves.

Every record is `{"step": int, "split": "train"|"eval", <name>: float, ...}`,
appended to `<workdir>/metrics.jsonl` and mirrored as TensorBoard scalars
`<split>/<name>` under `<workdir>/tensorboard`. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from vit_jax.formats.base import atomic_outputs

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_records(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        self.workdir = workdir
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tensorboard = None
        if not enabled:
            return
        if resume_step is not None:
            self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter

        # purge_step drops events a killed run logged past the checkpoint we resume from.
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Forget records a killed run wrote after the checkpoint we resume from."""
        kept = [r for r in read_records(self.workdir) if r["step"] <= step]
        with atomic_outputs(self.path, overwrite=True) as (temp,):  # the run's own file
            temp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if math.isfinite(value):
                self._tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


def plot_curves(workdir: str) -> str | None:
    """Loss, accuracy and learning rate against step, to `<workdir>/curves.png`."""
    records = read_records(workdir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("loss", "loss"), ("accuracy", "top-1 accuracy"), ("lr", "learning rate"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    for ax, (name, title) in zip(axes, panels):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[name]) for r in records if r["split"] == split and name in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, style, label=split, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, CURVES_FILE)
    with atomic_outputs(path, overwrite=True) as (temp,):  # the run's own file
        fig.savefig(temp, format="png", dpi=100)
    plt.close(fig)
    return path
