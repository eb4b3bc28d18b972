"""oneDNN matmuls on XLA:CPU (vit_jax/cpu/onednn.py): the flags, and the model under them.

XLA reads its flags once per process, so the model runs under the oneDNN flags
in a child process; its losses, gradients and logits must match this process's
(XLA's default matmuls). A configuration the oneDNN path cannot compile kills
the child ("partition compile failed", SIGILL), which fails the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vit_jax
from vit_jax.cpu import onednn as cpu_matmuls
from vit_jax.model import VisionTransformer, apply_with_intermediates, init_params
from vit_jax.training.config import TRAINING_PRESETS

# Each case: (preset, config overrides, image size); bfloat16 cases are compared loosely.
CASES = {
    "Ti16_224": ("ViT-Ti_16", {}, 224),
    "S16_no_qkv_bias": ("ViT-S_16", {"qkv_bias": False, "num_layers": 2}, 64),
    "S16_gap": ("ViT-S_16", {"classifier": "gap", "num_layers": 2}, 64),
    "Ti16_scan_remat": ("ViT-Ti_16", {"scan": True, "remat": True,
                                      "remat_policy": "dots_with_no_batch_dims_saveable"}, 64),
    "Ti16_dropouts": (
        "ViT-Ti_16",
        {"num_layers": 3, "dropout_rate": 0.1, "attention_dropout_rate": 0.1, "stochastic_depth_rate": 0.2},
        64,
    ),
    "Ti16_explicit_pre_logits": ("ViT-Ti_16", {"num_layers": 2, "attention_impl": "explicit",
                                               "representation_size": 96}, 64),
    "Ti16_bf16": ("ViT-Ti_16", {"num_layers": 2, "dtype": "bfloat16"}, 64),
    "Ti16_recompute_gelu": ("ViT-Ti_16", {"num_layers": 2, "recompute_gelu": True}, 64),
    "S16_recompute_exact_gelu_scan_remat": (
        "ViT-S_16",
        {"num_layers": 2, "recompute_gelu": True, "gelu": "exact", "scan": True, "remat": True,
         "remat_policy": "dots_with_no_batch_dims_saveable"},
        64,
    ),
    "digits": ("ViT-digits", {}, 16),  # train.py's default model
}


def _numbers(name: str) -> dict:
    """Loss, gradient norms per top-level module, and inference logits for CASES[name]."""
    preset, overrides, size = CASES[name]
    if preset in TRAINING_PRESETS:
        config = dataclasses.replace(TRAINING_PRESETS[preset], head_zero_init=False, kernels="cpu", **overrides)
    else:
        config = vit_jax.get_config(preset, image_size=size, num_classes=10, head_zero_init=False, kernels="cpu",
                                    **overrides)
    model = VisionTransformer(config)
    params = init_params(config, 0)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(-1, 1, (4, size, size, 3)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 10, 4))
    dropout_rng = jax.random.key(1)

    def loss_fn(p):
        logits = model.apply({"params": p}, images, train=True, rngs={"dropout": dropout_rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()

    # Each result is waited for while its compiled function is alive (see vit_jax/cpu/onednn.py).
    train_grads = jax.jit(jax.value_and_grad(loss_fn))
    loss, grads = jax.block_until_ready(train_grads(params))
    infer = jax.jit(lambda p: apply_with_intermediates(model, {"params": p}, images, return_attention=True))
    logits, inter = jax.block_until_ready(infer(params))
    # The plain forward differs from the two above: the attention core undifferentiated,
    # and the final norm on the class token only.
    infer_plain = jax.jit(lambda p: model.apply({"params": p}, images))
    plain_logits = jax.block_until_ready(infer_plain(params))
    flat = jax.tree_util.tree_leaves_with_path(grads)
    return {
        "loss": float(loss),
        "grad_norms": {jax.tree_util.keystr(k): float(jnp.linalg.norm(v.astype(jnp.float32))) for k, v in flat},
        "logits": np.asarray(logits, np.float32).tolist(),
        "plain_logits": np.asarray(plain_logits, np.float32).tolist(),
        "attn_probs_0": float(jnp.sum(inter["blocks.0.attn_probs"].astype(jnp.float32) ** 2)),
    }


def _numbers_under_onednn(names: list[str]) -> dict:
    env = dict(os.environ, XLA_FLAGS=cpu_matmuls.with_onednn_flags(""), JAX_PLATFORMS="cpu")
    code = (
        "import json, sys; sys.path.insert(0, %r); import test_cpu_onednn as t; "
        "from vit_jax.cpu import onednn as cpu_matmuls; assert cpu_matmuls.onednn_matmuls_enabled(); "
        "print(json.dumps({n: t._numbers(n) for n in %r}))" % (os.path.dirname(__file__), names)
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"oneDNN child exited {out.returncode}:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _check_close(name: str, got: dict, want: dict) -> None:
    tol = 1e-2 if CASES[name][1].get("dtype") == "bfloat16" else 1e-5
    assert _rel(got["loss"], want["loss"]) < tol, (name, got["loss"], want["loss"])
    assert _rel(got["logits"], want["logits"]) < tol, name
    assert _rel(got["plain_logits"], want["plain_logits"]) < tol, name
    assert _rel(got["plain_logits"], want["logits"]) < tol, name  # the plain forward is the same function
    assert _rel(got["attn_probs_0"], want["attn_probs_0"]) < tol, name
    assert got["grad_norms"].keys() == want["grad_norms"].keys()
    norms_got = np.array([got["grad_norms"][k] for k in sorted(want["grad_norms"])])
    norms_want = np.array([want["grad_norms"][k] for k in sorted(want["grad_norms"])])
    assert _rel(norms_got, norms_want) < tol, name
    assert np.all(norms_want[norms_want > 0] > 0)


@pytest.mark.slow
def test_model_under_onednn_matmuls_matches_the_default_path():
    names = list(CASES)
    onednn = _numbers_under_onednn(names)
    for name in names:
        _check_close(name, onednn[name], _numbers(name))


def test_onednn_flags_are_added_once_and_keep_what_the_user_set():
    flags = cpu_matmuls.with_onednn_flags("--xla_force_host_platform_device_count=8")
    assert flags.split()[0] == "--xla_force_host_platform_device_count=8"
    assert all(f in flags.split() for f in cpu_matmuls.ONEDNN_XLA_FLAGS)
    assert cpu_matmuls.with_onednn_flags(flags) == flags
    mine = cpu_matmuls.with_onednn_flags("--xla_cpu_experimental_ynn_fusion_type=")
    assert "--xla_cpu_experimental_ynn_fusion_type=" in mine.split()
    assert "--xla_cpu_experimental_ynn_fusion_type=reduce" not in mine.split()
    assert cpu_matmuls.onednn_matmuls_enabled(flags)
    assert not cpu_matmuls.onednn_matmuls_enabled("")
    assert not cpu_matmuls.onednn_matmuls_enabled("--xla_cpu_use_onednn=false "
                                                  "--xla_cpu_experimental_onednn_fusion_type=dot")
    assert not cpu_matmuls.onednn_matmuls_enabled("--xla_cpu_use_onednn=true")


def test_enabling_after_the_backend_started_is_an_error_that_says_when_to_call_it():
    jax.devices()  # the backend is up
    before = os.environ.get("XLA_FLAGS")
    with pytest.raises(RuntimeError, match="before JAX initialises its backends"):
        cpu_matmuls.enable_onednn_matmuls()
    assert os.environ.get("XLA_FLAGS") == before
    cpu_matmuls.select("xla")  # the default needs nothing and never fails
    with pytest.raises(ValueError, match="must be one of"):
        cpu_matmuls.select("mkl")


def test_train_cli_rejects_onednn_once_jax_is_running(tmp_path, capsys):
    from vit_jax import train_cli as train

    jax.devices()
    code = train.main(["--cpu-matmuls", "onednn", "--steps", "1", "--workdir", str(tmp_path / "run")])
    assert code == 1
    assert "before JAX initialises its backends" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bench_cli_runs_with_onednn_matmuls_and_records_them(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--presets", "ViT-testing", "--image-size", "16", "--batch", "4", "--repeats", "1", "--warmup", "1",
            "--no-torch-compile", "--cpu-matmuls", "onednn", "--json", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.model_bench", *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"]["xla_cpu_matmuls"] == "onednn"
    assert "XLA:CPU matmuls: onednn" in run.stdout
    assert [(r["preset"], r["mode"]) for r in result["rows"]] == [("ViT-testing", "infer"), ("ViT-testing", "train")]


def test_bench_cli_refuses_onednn_once_jax_is_running(capsys):
    from benchmarks import model_bench as bench

    jax.devices()
    with pytest.raises(SystemExit) as err:
        bench.main(["--cpu-matmuls", "onednn", "--presets", "ViT-testing"])
    assert err.value.code == 2
    assert "before JAX initialises its backends" in capsys.readouterr().err
