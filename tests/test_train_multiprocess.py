"""Two processes on 127.0.0.1 (gloo CPU collectives) against one process with the same global batch."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from train_runs import TINY, final_params, losses, run_train, run_two_processes

STEPS = 6
ARGS = TINY + ["--steps", str(STEPS), "--batch-size", "32", "--log-every", "1", "--eval-every", "3",
               "--warmup-steps", "2"]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = str(tmp_path / "single")
    result = run_train(ARGS + ["--workdir", single])
    assert result.returncode == 0, result.stderr[-3000:]

    multi = str(tmp_path / "multi")
    run_two_processes(ARGS, multi, devices=1)

    with open(os.path.join(multi, "config.json")) as f:
        config = json.load(f)
    assert config["processes"] == 2 and config["devices"] == 2
    np.testing.assert_allclose(losses(multi), losses(single), rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), final_params(multi), final_params(single))
    # Each process's data position is in the checkpoint, for --resume.
    with open(os.path.join(multi, "checkpoints", str(STEPS), "data", "metadata")) as f:
        data_state = json.load(f)
    assert [s["next_batch"] for s in data_state["processes"]] == [STEPS, STEPS]
