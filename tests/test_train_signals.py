"""Ctrl-C and SIGTERM at any moment: a quick exit with 130 / 143, one line, and a run directory that still works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from train_runs import REPO, TINY, TRAIN_PY, train_env

ARGS = TINY + ["--steps", "40", "--batch-size", "32", "--checkpoint-every", "10", "--eval-every", "10",
               "--warmup-steps", "2", "--log-every", "1"]


def start(workdir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAIN_PY, *ARGS, "--workdir", workdir], env=train_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the moment to interrupt it"


def interrupt(proc: subprocess.Popen, signum: int) -> tuple[float, str]:
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return time.time() - sent, err


def assert_clean_exit(proc, elapsed: float, err: str, signum: int) -> None:
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert elapsed < 15, f"took {elapsed:.1f} s to stop"
    for noise in ("Traceback", "Exception ignored", "cannot schedule new futures"):
        assert noise not in err, err[-3000:]
    assert "train.py: interrupted" in err


def checkpoints(workdir: str) -> list[str]:
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []


@pytest.mark.slow
@pytest.mark.parametrize("signum, moment", [
    (signal.SIGINT, 0.2), (signal.SIGTERM, 1.5), (signal.SIGINT, "config written"), (signal.SIGTERM, "training"),
])
def test_a_signal_before_the_first_checkpoint_exits_quickly_and_leaves_nothing(tmp_path, signum, moment):
    workdir = str(tmp_path / "run")
    proc = start(workdir)
    if moment == "config written":  # setup done, compiling the train step
        wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")), proc)
    elif moment == "training":
        wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")), proc)
    else:
        time.sleep(moment)
    elapsed, err = interrupt(proc, signum)
    assert_clean_exit(proc, elapsed, err, signum)
    assert not checkpoints(workdir)
    assert not os.path.exists(workdir) or not os.listdir(workdir), os.listdir(workdir)


@pytest.mark.slow
def test_a_signal_after_a_checkpoint_keeps_it_and_resume_finishes_the_run(tmp_path):
    workdir = str(tmp_path / "run")
    proc = start(workdir)
    wait_for(lambda: checkpoints(workdir), proc)
    elapsed, err = interrupt(proc, signal.SIGTERM)
    assert_clean_exit(proc, elapsed, err, signal.SIGTERM)
    assert checkpoints(workdir)
    result = subprocess.run([sys.executable, TRAIN_PY, "--resume", "--workdir", workdir], env=train_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == 40


@pytest.mark.slow
def test_a_sigkill_before_the_first_checkpoint_does_not_block_resume(tmp_path):
    workdir = str(tmp_path / "run")
    proc = start(workdir)
    wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")), proc)
    proc.kill()
    proc.communicate()
    assert not checkpoints(workdir) and os.listdir(workdir)  # what a kill leaves: a config, no checkpoint
    result = subprocess.run([sys.executable, TRAIN_PY, "--resume", "--workdir", workdir], env=train_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting the run from step 0" in result.stderr
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == 40
