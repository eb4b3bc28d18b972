"""Data parallelism: 8 fake CPU devices under jit and pmap against one device; accumulation."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from train_runs import TINY, final_params, losses, run_train

STEPS = 6
ARGS = TINY + ["--steps", str(STEPS), "--batch-size", "32", "--log-every", "1", "--eval-every", str(STEPS),
               "--warmup-steps", "2"]


@pytest.mark.slow
def test_jit_and_pmap_on_8_devices_match_one_device(tmp_path):
    runs = {"one": (1, "jit"), "jit8": (8, "jit"), "pmap8": (8, "pmap")}
    for name, (devices, mode) in runs.items():
        result = run_train(ARGS + ["--workdir", str(tmp_path / name), "--parallel", mode], devices=devices)
        assert result.returncode == 0, result.stderr[-3000:]
    reference = losses(str(tmp_path / "one"))
    assert len(reference) == STEPS and np.ptp(reference) > 1e-3  # the params did move
    reference_params = final_params(str(tmp_path / "one"))
    for name in ("jit8", "pmap8"):
        np.testing.assert_allclose(losses(str(tmp_path / name)), reference, rtol=2e-5, err_msg=name)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, err_msg=name),
            final_params(str(tmp_path / name)),
            reference_params,
        )


@pytest.mark.slow
def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    for name, accum in (("full", "1"), ("accum", "4")):
        result = run_train(ARGS + ["--workdir", str(tmp_path / name), "--accum-steps", accum])
        assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(losses(str(tmp_path / "accum")), losses(str(tmp_path / "full")), rtol=2e-5)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(TINY + ["--batch-size", "12", "--steps", "2", "--workdir", str(workdir)], devices=8)
    assert result.returncode == 1
    assert "--batch-size 12 is not divisible by the number of devices (8)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(workdir)
