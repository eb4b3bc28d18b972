"""Training from Python: `vit_jax.training.train(...)` with a caller's ViTConfig and arrays, and the default digits.

The runs are a few dozen steps of tiny models: the checks are that the loss falls and the accuracy rises
on a real run, that the result and the run directory say the same, and that bad options raise (never exit).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from train_runs import records

from vit_jax import train_cli
from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import DataError
from vit_jax.training import TRAINING_ERRORS, TrainResult, train


def quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 8x8 images whose class (0..3) is the one bright quadrant, under noise: learnable in a few dozen steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.uniform(0.0, 0.35, (n, 8, 8)).astype(np.float32)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 0.6
    return images, labels


TINY_VIT = ViTConfig(name="tiny-quadrants", image_size=8, patch_size=4, num_channels=1, num_classes=4,
                     hidden_size=16, mlp_dim=32, num_heads=2, num_layers=1, classifier="map",
                     pixel_mean=(0.5,), pixel_std=(0.5,))


@pytest.mark.slow  # two compiles and 60 steps: ~20 s on a quiet 2-core machine
def test_train_on_arrays_in_memory_with_a_custom_vit_config(tmp_path, capsys):
    workdir = tmp_path / "run"
    result = train(model=TINY_VIT, train_data=quadrant_images(256, 0), eval_data=quadrant_images(64, 1),
                   steps=60, batch_size=32, eval_every=20, log_every=5, warmup_steps=5, lr=1e-2, label_smoothing=0.0,
                   augment=False, workdir=workdir, verbose=False)
    assert capsys.readouterr().out == ""  # verbose=False: no progress, eval lines or summary
    assert isinstance(result, TrainResult)
    assert result.workdir == str(workdir) and result.step == 60
    evals = records(str(workdir), "eval")
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert result.metrics == pytest.approx({k: evals[-1][k] for k in result.metrics})
    assert result.eval_accuracy == result.metrics["accuracy"]
    # It learnt: the loss fell and the held-out accuracy rose from chance (0.25) to near perfect.
    losses = [r["loss"] for r in records(str(workdir))]
    assert losses[-1] < 0.5 * losses[0], losses
    assert evals[0]["accuracy"] < result.eval_accuracy and result.eval_accuracy >= 0.9, evals
    # The run directory holds the caller's architecture, headed for the data's 4 classes, and its data.
    saved = json.loads((workdir / "config.json").read_text())
    assert {k: saved["model"][k] for k in ("hidden_size", "num_layers", "classifier", "num_channels")} == \
        {"hidden_size": 16, "num_layers": 1, "classifier": "map", "num_channels": 1}
    assert saved["model"]["num_classes"] == 4 and saved["train"]["model"] == "tiny-quadrants"
    assert saved["data"]["kind"] == "arrays" and saved["data"]["num_train"] == 256
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == 60 and summary["eval"] == pytest.approx(result.metrics)

    # The run's own options are the base of an eval_only call, as on the command line; the command itself
    # refuses the run, whose data it cannot load, in one line.
    evaluated = train(eval_only=True, workdir=workdir, train_data=quadrant_images(256, 0),
                      eval_data=quadrant_images(64, 1), eval_step=60, verbose=False)
    assert evaluated.step == 60 and evaluated.metrics == pytest.approx(result.metrics)
    assert train_cli.main(["--resume", "--workdir", str(workdir)]) == 1
    assert "trained on in-memory data" in capsys.readouterr().err


@pytest.mark.slow  # one compile and 3 steps: ~10 s on a quiet 2-core machine
def test_fine_tune_from_weights_held_in_memory(tmp_path):
    """init=(ViTConfig, params): resized to 16 px and re-headed for 2 classes; with freeze_backbone the blocks
    end exactly as given, so the run really started from these weights."""
    from vit_jax.model import init_params
    from vit_jax.training.checkpoint import Checkpointer

    given = init_params(TINY_VIT, rng=3)
    images, labels = quadrant_images(64, 2)
    workdir = tmp_path / "run"
    train(init=(TINY_VIT, given), freeze_backbone=True, image_size=16, train_data=(images, labels % 2),
          steps=3, batch_size=16, workdir=workdir, verbose=False)
    saved = json.loads((workdir / "config.json").read_text())
    assert (saved["model"]["image_size"], saved["model"]["num_classes"]) in (([16, 16], 2), (16, 2))
    checkpoints = Checkpointer(str(workdir), read_only=True)
    try:
        _, params = checkpoints.restore_params(3)
    finally:
        checkpoints.close()
    block = "encoderblock_0" if "encoderblock_0" in params["Transformer"] else "encoderblock"
    np.testing.assert_array_equal(params["Transformer"][block]["MlpBlock_0"]["Dense_0"]["kernel"],
                                  given["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"])
    assert params["head"]["kernel"].shape == (16, 2)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape[1] == 16  # 4x4 patches of 4 px: resized
    with pytest.raises(ConfigError, match="expected a checkpoint path or a"):
        train(init=(TINY_VIT,), train_data=(images, labels), workdir=tmp_path / "bad", verbose=False)


@pytest.mark.slow  # the default model, 30 steps: ~20 s on a quiet 2-core machine
def test_train_on_the_default_digits_from_python(tmp_path, capsys, monkeypatch):
    """The command's default run, shortened by options only; it prints what the command prints."""
    monkeypatch.chdir(tmp_path)  # the default workdir is runs/digits-<time> under the working directory
    result = train(steps=30, batch_size=64, warmup_steps=5, eval_every=15, progress=False)
    out = capsys.readouterr().out
    assert result.step == 30 and result.workdir.startswith(str(tmp_path / "runs" / "digits-"))
    assert f"eval accuracy {result.eval_accuracy:.4f}" in out and f"workdir      {result.workdir}" in out
    saved = json.loads(open(os.path.join(result.workdir, "config.json")).read())
    assert saved["model"]["name"] == "ViT-digits" and saved["data"]["kind"] == "digits"
    evals = records(result.workdir, "eval")
    assert result.eval_accuracy > evals[0]["accuracy"] and result.eval_accuracy > 0.25, evals  # chance is 0.1


@pytest.mark.parametrize("options, error, message", [
    (dict(batch_size=0), ConfigError, "--batch-size must be positive, got 0"),
    (dict(batch_sise=8), ConfigError, "batch_size"),
    (dict(lr="fast"), ConfigError, "lr='fast': expected a number"),
    (dict(augment=1), ConfigError, "augment=1: expected True or False"),
    (dict(classifier="unpooled"), ConfigError, "--classifier 'unpooled' is not one of"),
    (dict(model=16), ConfigError, "model=16: expected a preset name or a ViTConfig"),
    (dict(eval_data=quadrant_images(4, 0)), ConfigError, "eval_data needs train_data"),
    (dict(train_data=quadrant_images(4, 0), dataset="npz"), ConfigError, "train_data replaces dataset="),
    (dict(train_data=(np.zeros((4, 8, 8)), np.zeros(3))), DataError, "4 images but 3 labels"),
    (dict(train_data=(np.full((4, 8, 8), 2.0), np.zeros(4))), DataError, "float images must be in [0, 1]"),
    (dict(train_data=[1, 2, 3]), DataError, "expected an (images, labels) pair of arrays or a record source"),
])
def test_bad_options_raise_a_clear_error_and_write_nothing(tmp_path, options, error, message):
    workdir = tmp_path / "run"
    with pytest.raises(error) as raised:
        train(workdir=workdir, verbose=False, **options)
    assert message in str(raised.value) and isinstance(raised.value, TRAINING_ERRORS)
    assert not workdir.exists()
