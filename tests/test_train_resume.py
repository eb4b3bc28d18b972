"""SIGKILL a run and --resume it: bit-identical to an uninterrupted run; a kill mid-write is harmless."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_runs import REPO, TINY, TRAIN_PY, final_params, records, run_train, train_env

from vit_jax.training.checkpoint import Checkpointer

STEPS = 40
ARGS = TINY + ["--steps", str(STEPS), "--batch-size", "32", "--checkpoint-every", "5", "--eval-every", "10",
               "--log-every", "1", "--warmup-steps", "5", "--dropout-rate", "0.1", "--mixup-alpha", "0.2"]


def finished_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    # Dropout, mixup and augmentation are on, so the RNG and data position must be restored too.
    straight = str(tmp_path / "straight")
    result = run_train(ARGS + ["--workdir", straight])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *ARGS, "--workdir", killed], env=train_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not finished_steps(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = max(finished_steps(killed))
    assert stopped_at < STEPS, "the run finished before it could be killed"

    result = run_train(["--resume", "--workdir", killed])  # the run's own config.json supplies the rest
    assert result.returncode == 0, result.stderr[-3000:]
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), final_params(killed), final_params(straight))
    # The metrics log reads as one run: one row per step, the same losses.
    assert [r["step"] for r in records(killed)] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in records(killed)] == [r["loss"] for r in records(straight)]


WRITER = """
import sys
import numpy as np
from vit_jax.training.checkpoint import Checkpointer
from vit_jax.training.state import TrainState

def state(step, size):
    params = {"w": np.full(size, step, np.float32)}
    return TrainState(step=np.asarray(step, np.int32), params=params, opt_state={"mu": params},
                      rng=np.zeros(2, np.uint32))

checkpoints = Checkpointer(sys.argv[1])
checkpoints.save(1, state(1, 1000), {"next_batch": 1})
checkpoints.wait()
print("saved 1", flush=True)
checkpoints.save(2, state(2, 50_000_000), {"next_batch": 2})  # 400 MB: slow enough to be killed mid-write
print("saving 2", flush=True)
checkpoints.wait()
print("saved 2", flush=True)
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_usable(tmp_path):
    workdir = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, workdir], env=train_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "saved 1"
    assert proc.stdout.readline().strip() == "saving 2"
    directory = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 60
    while not any("tmp" in name for name in os.listdir(directory)) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [name for name in os.listdir(directory) if "tmp" in name]
    assert leftovers, "the kill did not land during the write of step 2"
    assert "2" not in os.listdir(directory)

    checkpoints = Checkpointer(workdir)
    try:
        assert checkpoints.latest_step() == 1
        template = jax.tree.map(np.zeros_like, _template())
        state, data_state = checkpoints.restore(1, template)
        assert data_state == {"next_batch": 1}
        np.testing.assert_array_equal(state.params["w"], np.ones(1000, np.float32))
        # The resumed run writes step 2 again; the half-written one is cleared away.
        checkpoints.save(2, state.replace(step=np.asarray(2, np.int32)), {"next_batch": 2})
        checkpoints.wait()
    finally:
        checkpoints.close()
    assert sorted(os.listdir(directory)) == ["1", "2"]


def _template():
    from vit_jax.training.state import TrainState

    params = {"w": np.zeros(1000, np.float32)}
    return TrainState(step=np.asarray(0, np.int32), params=params, opt_state={"mu": params},
                      rng=np.zeros(2, np.uint32))
