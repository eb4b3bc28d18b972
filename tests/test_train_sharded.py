"""Sharded training on 8 fake CPU devices: every mesh computes the same run; resume across meshes; dry runs.

The runs of one test share one subprocess (tests/sharded_runs.py): JAX takes
its device count at start, and one start for many runs saves most of the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from train_runs import REPO, final_params, losses, run_two_processes, train_env

STEPS = 6
# Every weight sharded (--shard-min-mib 0); 4 heads so that model=4 divides them; a constant lr after the
# warmup, so that a 3-step run resumed to 6 steps sees the learning rates of a 6-step run.
SMALL = ["--hidden-size", "32", "--mlp-dim", "64", "--num-heads", "4", "--num-layers", "1",
         "--stochastic-depth-rate", "0", "--no-progress", "--batch-size", "32", "--log-every", "1",
         "--eval-every", "3", "--warmup-steps", "2", "--schedule", "constant", "--lr", "1e-2",
         "--shard-min-mib", "0"]
MESHES = {"data8": "data=8", "fsdp8": "fsdp=8", "mixed": "data=2,fsdp=2,model=2"}
RTOL = 1e-4


def run_batch(tmp_path, runs: list[tuple[str, list[str]]], devices: int = 8) -> dict:
    spec, out = tmp_path / "spec.json", tmp_path / "results.json"
    spec.write_text(json.dumps(runs))
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharded_runs.py"), str(spec), str(out)],
                            env=train_env(devices=devices), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


def max_rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def assert_same_params(got: dict, want: dict, name: str) -> None:
    """Within RTOL; the key biases, whose exact gradient is zero (softmax ignores a shift shared by all keys), are
    rounding noise that AdamW scales up, and are only checked to stay small."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        where = f"{name}: {jax.tree_util.keystr(path)}"
        if "'key'" in where and "'bias'" in where:
            assert max(np.max(np.abs(a)), np.max(np.abs(b))) < 1e-3, where
        else:
            np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-5, err_msg=where)


BAD_INPUTS = {  # name: (argv beyond SMALL, what its one error line says)
    "product": (["--mesh", "data=2,fsdp=2"], "--mesh data=2,fsdp=2 has 4 devices, but this run has 8 device(s) "
                                             "across 1 process(es)"),
    "unknown-axis": (["--mesh", "data=2,tensor=4"], "unknown axis 'tensor'; the axes are data, fsdp, model"),
    "two-rest": (["--mesh", "data=-1,fsdp=-1"], "at most one axis may be -1"),
    "heads": (["--mesh", "data=1,model=8"], "mesh axis model=8 does not divide the model's 4 attention heads"),
    "mlp": (["--mlp-dim", "66", "--mesh", "data=2,model=4"],
            "mesh axis model=4 does not divide the model's 66 MLP width"),
}


@pytest.mark.slow  # ~50 s on 2 cores: kept out of the fast subset
def test_every_mesh_trains_the_same_run_and_resumes_on_another(tmp_path):
    resumed = str(tmp_path / "fsdp8")
    runs = [
        ("data8", SMALL + ["--steps", str(STEPS), "--mesh", "data=8", "--workdir", str(tmp_path / "data8")]),
        # 3 steps on fsdp=8, then 3 more on data=2,model=4.
        ("fsdp8", SMALL + ["--steps", str(STEPS // 2), "--mesh", "fsdp=8", "--workdir", resumed]),
        ("resumed", ["--resume", "--steps", str(STEPS), "--mesh", "data=2,model=4", "--workdir", resumed]),
        # With --remat, --accum-steps and the reference kernels (the others run the CPU kernels).
        ("mixed", SMALL + ["--steps", str(STEPS), "--mesh", "data=2,fsdp=2,model=2", "--remat",
                           "--accum-steps", "2", "--kernels", "reference", "--workdir", str(tmp_path / "mixed")]),
    ]
    runs += [(name, SMALL + ["--steps", "2", *argv, "--workdir", str(tmp_path / name)])
             for name, (argv, _) in BAD_INPUTS.items()]
    results = run_batch(tmp_path, runs)

    for name in ("data8", "fsdp8", "resumed", "mixed"):
        assert results[name]["code"] == 0, (name, results[name]["stderr"])
    reference = losses(str(tmp_path / "data8"))
    assert len(reference) == STEPS and reference[-1] < reference[0] - 1e-2  # it learns
    reference_params = final_params(str(tmp_path / "data8"))  # read back in this 1-device process
    # fsdp8: the losses of the uninterrupted run, on both meshes.
    for name in ("fsdp8", "mixed"):
        assert max_rel(losses(str(tmp_path / name)), reference) < RTOL, name
        assert_same_params(final_params(str(tmp_path / name)), reference_params, name)

    for name, (_, expected) in BAD_INPUTS.items():
        stderr = results[name]["stderr"]
        assert results[name]["code"] == 1 and expected in stderr, (name, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
        assert not os.path.exists(tmp_path / name), name  # refused before anything was written or compiled


def test_dry_run_of_the_giant_presets_shards_params_and_optimizer_state(tmp_path):
    # Compile-only; a small image keeps the activations (not under test here) and the compile time small.
    runs = [(name, ["--model", name, "--mesh", "fsdp=8", "--dry-run", "--batch-size", "8", "--scan",
                    "--image-size", "28", "--workdir", str(tmp_path / name)]) for name in ("ViT-G_14", "ViT-g_14")]
    results = run_batch(tmp_path, runs)
    for name, _ in runs:
        assert results[name]["code"] == 0, results[name]["stderr"]
        report = json.loads((tmp_path / name / "memory.json").read_text())
        assert report["devices"] == 8 and report["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
        for part in ("params", "opt_state"):
            total, per_device = report[f"{part}_bytes_total"], report[f"{part}_bytes_per_device"]
            assert abs(per_device / (total / 8) - 1) < 0.1, (name, part, per_device, total)
        # float32 params (10 classes: the digits) and AdamW's two moments of each.
        assert report["params_bytes_total"] == 4 * report["num_params"]
        assert report["opt_state_bytes_total"] >= 2 * report["params_bytes_total"]
        xla = report["xla_per_device_bytes"]
        # XLA's arguments are this device's shards of the state (and of the batch): about an eighth of it.
        state_per_device = report["params_bytes_per_device"] + report["opt_state_bytes_per_device"]
        assert state_per_device <= xla["argument"] < 1.05 * state_per_device, (name, xla)
        assert xla["temp"] > 0 and xla["alias"] > 0
        assert os.listdir(tmp_path / name) == ["memory.json"]


@pytest.mark.slow
def test_two_processes_with_fsdp_across_them_and_a_resume_on_four_devices_match_one_process(tmp_path):
    single, resumed = str(tmp_path / "single"), str(tmp_path / "resumed")
    results = run_batch(tmp_path, [
        ("single", SMALL + ["--steps", str(STEPS), "--mesh", "fsdp=8", "--workdir", single]),
        ("first-half", SMALL + ["--steps", str(STEPS // 2), "--mesh", "fsdp=8", "--workdir", resumed]),
    ])
    assert results["single"]["code"] == 0 and results["first-half"]["code"] == 0, results

    multi = str(tmp_path / "multi")
    run_two_processes([*SMALL, "--steps", str(STEPS), "--mesh", "fsdp=8"], multi, devices=4)
    with open(os.path.join(multi, "config.json")) as f:
        config = json.load(f)
    assert config["processes"] == 2 and config["devices"] == 8
    assert max_rel(losses(multi), losses(single)) < RTOL
    assert_same_params(final_params(multi), final_params(single), "two processes")
    # Each process wrote its own shards; the run reads back in one process on one device, as any run does.
    import vit_jax

    model, params = vit_jax.load_pretrained(multi)
    assert model.num_heads == 4
    assert_same_params(params, final_params(single), "load_pretrained")

    # Saved on 8 devices, resumed on 4.
    second = run_batch(tmp_path, [("second-half", ["--resume", "--steps", str(STEPS), "--mesh", "data=2,fsdp=2",
                                                   "--workdir", resumed])], devices=4)
    assert second["second-half"]["code"] == 0, second["second-half"]["stderr"]
    assert max_rel(losses(resumed), losses(single)) < RTOL
    assert_same_params(final_params(resumed), final_params(single), "resumed on 4 devices")
