"""Fine-tuning from a small Google-layout npz at a different resolution, with and without a frozen backbone."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from train_runs import TINY, final_params, records

from vit_jax import ViTConfig, init_params, load_pretrained
from vit_jax import train_cli as train
from vit_jax.formats.mapping import flatten

# A "pretrained" model at 8 px (2x2 patches + cls) with a 5-class head; digits fine-tunes it at 16 px.
SOURCE = ViTConfig(name="small", image_size=8, patch_size=4, num_classes=5, hidden_size=32, mlp_dim=64,
                   num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def google_npz(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pretrained") / "small.npz")
    np.savez(path, **{k: np.asarray(v) for k, v in flatten(init_params(SOURCE, 1)).items()})
    return path


@pytest.mark.slow
def test_finetune_at_a_new_resolution_runs_and_learns(google_npz, tmp_path):
    workdir = str(tmp_path / "run")
    argv = ["--init", google_npz, "--image-size", "16", "--steps", "60", "--warmup-steps", "5", "--lr", "3e-3",
            "--log-every", "1", "--eval-every", "60", "--no-progress", "--workdir", workdir]
    assert train.main(argv) == 0
    with open(os.path.join(workdir, "config.json")) as f:
        model = json.load(f)["model"]
    assert (model["image_size"], model["hidden_size"], model["num_layers"], model["num_classes"]) == (16, 32, 2, 10)
    params = final_params(workdir)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)
    assert params["head"]["kernel"].shape == (32, 10)
    losses = [r["loss"] for r in records(workdir)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert records(workdir, "eval")[-1]["accuracy"] > 0.3  # chance is 0.1


@pytest.mark.slow
def test_freeze_backbone_trains_only_the_head(google_npz, tmp_path):
    workdir = str(tmp_path / "run")
    argv = ["--init", google_npz, "--image-size", "16", "--freeze-backbone", "--steps", "4", "--batch-size", "32",
            "--warmup-steps", "0", "--no-progress", "--workdir", workdir]
    assert train.main(argv) == 0
    _, start = load_pretrained(google_npz, image_size=16, num_classes=10)
    trained = flatten(final_params(workdir))
    for key, value in flatten(start).items():
        if key.startswith("head/"):
            assert not np.array_equal(trained[key], value), key
        else:
            np.testing.assert_array_equal(trained[key], value, err_msg=key)


def test_architecture_flags_that_contradict_init_are_rejected(google_npz, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--init", google_npz, "--hidden-size", "64", "--workdir", str(workdir)] + TINY[-1:]
    assert train.main(argv) == 1
    assert "--hidden-size differs from the --init checkpoint" in capsys.readouterr().err
    assert not workdir.exists()
