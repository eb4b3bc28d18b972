"""The one-command GPU check runs to completion in its dry-run mode on the CPU, so it cannot rot."""

import json
import subprocess
import sys

import pytest
from train_runs import REPO, train_env


@pytest.mark.slow
def test_gpu_check_dry_run_completes_every_step(tmp_path):
    out = tmp_path / "gc"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out)],
                         cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for step in ("gpu tests", "parity float32", "parity bfloat16", "bench bf16 train", "fsdp L16 train"):
        assert any(line.startswith(step) and " ok " in line for line in run.stdout.splitlines()), run.stdout
    for report in ("parity_float32", "parity_bfloat16"):
        assert json.loads((out / report / "report.json").read_text())["verdict"] == "pass"
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert rows[0]["dtype"] == "bfloat16" and rows[0]["kernels"] == "reference"
    assert rows[0]["backends"]["jax"]["images_per_s"] > 0
    assert "img/s" in run.stdout.splitlines()[-1]
    fsdp = json.loads((out / "fsdp.json").read_text())
    assert fsdp["images_per_s"] > 0 and fsdp["mesh"]["fsdp"] == fsdp["devices"] and fsdp["dtype"] == "bfloat16"
    assert "fsdp over" in run.stdout.splitlines()[-2]


def test_gpu_check_refuses_a_machine_without_a_gpu_unless_dry_run(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path / "gc")],
                         cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "not a GPU" in run.stderr and "--dry-run" in run.stderr
