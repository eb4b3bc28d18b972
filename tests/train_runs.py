"""Helpers for the training tests: run train.py in a subprocess, read what a run wrote.

In-process tests import the library (vit_jax.train_cli, vit_jax.training), never train.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_PY = os.path.join(REPO, "train.py")

# A small, fast model on digits for tests that check mechanics, not accuracy.
TINY = ["--hidden-size", "32", "--mlp-dim", "64", "--num-heads", "2", "--num-layers", "1", "--stochastic-depth-rate",
        "0",
        "--no-progress"]


def train_env(devices: int | None = None) -> dict:
    """Environment for a train.py subprocess, with `devices` fake CPU devices if given."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_train(args: list[str], devices: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in a fresh process (JAX reads XLA_FLAGS only at start)."""
    return subprocess.run([sys.executable, TRAIN_PY, *args], env=train_env(devices), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(args: list[str], workdir: str, devices: int, timeout: float = 300) -> None:
    """`train.py ARGS` as one job of two processes on 127.0.0.1 (`devices` fake CPU devices each); both must exit 0."""
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, TRAIN_PY, *args, "--workdir", workdir, "--coordinator-address", address,
             "--num-processes", "2", "--process-id", str(i)],
            env=train_env(devices), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]


def records(workdir: str, split: str = "train") -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r["split"] == split]


def losses(workdir: str) -> np.ndarray:
    """Per-step train losses of a run logged with --log-every 1."""
    return np.asarray([r["loss"] for r in records(workdir)])


def final_params(workdir: str) -> dict:
    from vit_jax.training.checkpoint import Checkpointer

    checkpoints = Checkpointer(workdir, read_only=True)
    try:
        return checkpoints.restore_params(checkpoints.latest_step())[1]
    finally:
        checkpoints.close()


def assert_equal_trees(got, want, what: str) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want), what
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what + jax.tree_util.keystr(path))
