"""A job of two processes (gloo on 127.0.0.1): one signal stops both at the same step; a lost process is one line.

Each moment is an event of the run (a checkpoint directory appearing), never a fixed delay.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from train_runs import REPO, TINY, TRAIN_PY, free_port, train_env

from vit_jax.training.job import LOST_PEER_EXIT, lost_peer_message

TIMEOUT = 5  # --coordination-timeout: how long a silent process may take to count as gone
ARGS = TINY + ["--steps", "100000", "--batch-size", "16", "--checkpoint-every", "4", "--eval-every", "4",
               "--log-every", "1", "--warmup-steps", "1", "--coordination-timeout", str(TIMEOUT)]


def start_pair(workdir: str) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen([sys.executable, TRAIN_PY, *ARGS, "--workdir", workdir, "--coordinator-address", address,
                              "--num-processes", "2", "--process-id", str(i)],
                             env=train_env(1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for i in range(2)]


def wait_for_checkpoint(procs, workdir: str, step: int) -> None:
    """Until checkpoints/<step> is complete (orbax renames it last); polled, the run writes no line for it."""
    path = os.path.join(workdir, "checkpoints", str(step))
    while not os.path.isdir(path):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        time.sleep(0.02)


def finish(procs) -> list[tuple[int, str]]:
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # a swallowed signal: the job trains on
            p.kill()
            _, err = p.communicate()
        results.append((p.returncode, err))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path, signum):
    workdir = str(tmp_path / "run")
    procs = start_pair(workdir)
    try:
        wait_for_checkpoint(procs, workdir, 4)
        procs[1].send_signal(signum)
    finally:
        results = finish(procs)
    steps = set()
    for code, err in results:
        assert code == 128 + signum, (code, err[-3000:])
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
        found = re.fullmatch(r"train\.py: interrupted; every process of 2 stopped after step (\d+); "
                             r"the last checkpoint is step (\d+)", lines[0])
        assert found, lines[0]
        steps.add(found.groups())
    assert len(steps) == 1, steps  # the same step and checkpoint on both
    (stopped, last), = steps
    assert int(last) == int(stopped) // 4 * 4 and os.path.isdir(os.path.join(workdir, "checkpoints", last))


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["process-1", "process-0-the-coordinator"])
def test_a_killed_process_is_one_line_on_the_survivor_within_the_timeout(tmp_path, victim):
    workdir = str(tmp_path / "run")
    procs = start_pair(workdir)
    try:
        wait_for_checkpoint(procs, workdir, 4)
        procs[victim].send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        results = finish(procs)
    took = time.monotonic() - killed
    code, err = results[1 - victim]
    assert code == LOST_PEER_EXIT, (code, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    gone = "process 1 of 2 is gone" if victim == 1 else "process 0 of 2 (the coordinator) is gone"
    assert lines[0].startswith(f"train.py: error: {gone}; the last checkpoint is step "), lines[0]
    assert f"resume with train.py --resume --workdir {workdir}" in lines[0]
    assert took < 3 * TIMEOUT + 10, took


def test_the_lost_peer_line_names_the_process_the_runtime_reports(tmp_path):
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    (tmp_path / "checkpoints" / "8.orbax-checkpoint-tmp-3").mkdir()  # unfinished: not a checkpoint
    status = ("UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):\n2, 3\n"
              "The tasks have crashed.")
    assert lost_peer_message(status, 0, 4, str(tmp_path)) == (
        f"processes 2, 3 of 4 are gone; the last checkpoint is step 8; resume with train.py --resume --workdir "
        f"{tmp_path} (start every process again)")
    assert lost_peer_message("Socket closed", 1, 4, None).startswith(
        "process 0 of 4 (the coordinator) is gone; no checkpoint was written yet")
