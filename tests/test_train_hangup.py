"""SIGHUP (a closed terminal) and SIGQUIT (Ctrl-\\) end training as SIGTERM does: one line, 128 + signum, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from train_runs import REPO, TINY, TRAIN_PY, train_env

ARGS = TINY + ["--steps", "40", "--batch-size", "32", "--checkpoint-every", "10", "--eval-every", "10",
               "--warmup-steps", "2", "--log-every", "1"]


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_sighup_and_sigquit_stop_with_one_line_and_leave_nothing(tmp_path, signum):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, TRAIN_PY, *ARGS, "--workdir", workdir], env=train_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = os.path.join(workdir, "config.json")
    deadline = time.time() + 300
    while not os.path.exists(config) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, (proc.returncode, err[-3000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "train.py: interrupted" in err, err[-3000:]
    # Stopped before its first checkpoint, the fresh run leaves nothing behind (as for Ctrl-C and SIGTERM).
    assert not os.path.exists(workdir) or not os.listdir(workdir), os.listdir(workdir)
