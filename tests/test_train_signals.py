"""Ctrl-C and SIGTERM at any moment: an exit with 130 / 143, one line, and a run directory that still works.

Each moment is an event of the run (an import finished, a file written), never a fixed delay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from train_runs import REPO, TINY, TRAIN_PY, train_env

ARGS = TINY + ["--steps", "40", "--batch-size", "32", "--checkpoint-every", "10", "--eval-every", "10",
               "--warmup-steps", "2", "--log-every", "1"]


class Run:
    """train.py in a subprocess, its stderr collected line by line as it comes, so a test can wait for one."""

    def __init__(self, workdir: str, python_flags: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([sys.executable, *python_flags, TRAIN_PY, *ARGS, "--workdir", workdir],
                                     env=train_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for_line(self, predicate) -> None:
        """Until a line of stderr satisfies `predicate` (the run must still be going then)."""
        with self.changed:
            self.changed.wait_for(lambda: any(map(predicate, self.lines)) or not self.reader.is_alive())
        assert self.proc.poll() is None, "the run ended before the moment to interrupt it"

    def wait_for_file(self, exists) -> None:
        """Until `exists()` (a file the run writes); polled, the run writes no line for it."""
        while not exists() and self.proc.poll() is None:
            time.sleep(0.02)
        assert self.proc.poll() is None, "the run ended before the moment to interrupt it"

    def interrupt(self, signum: int) -> str:
        """Send `signum`; the run's whole stderr once it has exited."""
        self.proc.send_signal(signum)
        self.proc.wait(timeout=120)
        self.reader.join()
        return "".join(self.lines)


def imported(module: str):
    """A line of `python -X importtime` saying `module` has finished importing."""
    return lambda line: line.startswith("import time:") and line.rstrip().endswith(f" {module}")


def assert_clean_exit(proc, err: str, signum: int) -> None:
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    for noise in ("Traceback", "Exception ignored", "cannot schedule new futures"):
        assert noise not in err, err[-3000:]
    assert "train.py: interrupted" in err


def checkpoints(workdir: str) -> list[str]:
    directory = os.path.join(workdir, "checkpoints")
    return [n for n in os.listdir(directory) if n.isdigit()] if os.path.isdir(directory) else []


@pytest.mark.slow
@pytest.mark.parametrize("signum, moment", [
    (signal.SIGINT, "importing"), (signal.SIGTERM, "setting up"), (signal.SIGINT, "config written"),
    (signal.SIGTERM, "training"),
])
def test_a_signal_before_the_first_checkpoint_exits_cleanly_and_leaves_nothing(tmp_path, signum, moment):
    workdir = str(tmp_path / "run")
    # -X importtime prints a line as each import finishes: the moments before the run writes anything.
    run = Run(workdir, ("-X", "importtime") if moment in ("importing", "setting up") else ())
    if moment == "importing":  # numpy is train.py's first import after its signal handlers: JAX is still loading
        run.wait_for_line(imported("numpy"))
    elif moment == "setting up":  # every import done: loading the data, building the model
        run.wait_for_line(imported("vit_jax.training.parallel"))
    elif moment == "config written":  # setup done, compiling the train step
        run.wait_for_file(lambda: os.path.exists(os.path.join(workdir, "config.json")))
    else:
        run.wait_for_file(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")))
    err = run.interrupt(signum)
    assert_clean_exit(run.proc, err, signum)
    assert not checkpoints(workdir)
    assert not os.path.exists(workdir) or not os.listdir(workdir), os.listdir(workdir)


@pytest.mark.slow
def test_a_signal_after_a_checkpoint_keeps_it_and_resume_finishes_the_run(tmp_path):
    workdir = str(tmp_path / "run")
    run = Run(workdir)
    run.wait_for_file(lambda: checkpoints(workdir))
    err = run.interrupt(signal.SIGTERM)
    assert_clean_exit(run.proc, err, signal.SIGTERM)
    assert checkpoints(workdir)
    result = subprocess.run([sys.executable, TRAIN_PY, "--resume", "--workdir", workdir], env=train_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == 40


@pytest.mark.slow
def test_a_sigkill_before_the_first_checkpoint_does_not_block_resume(tmp_path):
    workdir = str(tmp_path / "run")
    run = Run(workdir)
    run.wait_for_file(lambda: os.path.exists(os.path.join(workdir, "config.json")))
    run.proc.kill()
    run.proc.wait()
    run.reader.join()
    assert not checkpoints(workdir) and os.listdir(workdir)  # what a kill leaves: a config, no checkpoint
    result = subprocess.run([sys.executable, TRAIN_PY, "--resume", "--workdir", workdir], env=train_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "starting the run from step 0" in result.stderr
    assert json.load(open(os.path.join(workdir, "summary.json")))["final_step"] == 40
