"""train.py with hybrid models: a hybrid preset made small by flags, and fine-tuning a hybrid .npz at a new size."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from checkpoint_writers import random_flax_params, write_google_npz
from train_runs import final_params, records

from vit_jax import get_config
from vit_jax import train_cli as train

SMALL_FLAGS = ["--resnet-layers", "1", "--width-factor", "0.5", "--hidden-size", "32", "--mlp-dim", "64",
               "--num-heads", "2", "--num-layers", "1", "--no-progress"]


def run_config(workdir: str) -> dict:
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["model"]


@pytest.mark.slow
def test_hybrid_preset_trains(tmp_path):
    workdir = str(tmp_path / "run")
    argv = ["--model", "R50+ViT-B_16", *SMALL_FLAGS, "--image-size", "32", "--steps", "3", "--batch-size", "16",
            "--eval-every", "3", "--workdir", workdir]
    assert train.main(argv) == 0
    model = run_config(workdir)
    assert (model["name"], model["resnet_layers"], model["width_factor"], model["stem_ws_form"]) == (
        "R50+ViT-B_16", [1], 0.5, "std")
    params = final_params(workdir)
    assert params["block1"]["unit1"]["conv_proj"]["kernel"].shape == (1, 1, 32, 128)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 65, 32)  # 32 px / 4 = 8x8 + cls
    assert all(np.isfinite(r["loss"]) for r in records(workdir))


@pytest.mark.slow
def test_finetune_a_hybrid_npz_at_another_resolution(tmp_path):
    source = get_config("R50+ViT-B_16").replace(image_size=16, resnet_layers=(1,), width_factor=0.5, hidden_size=32,
                                                 mlp_dim=64, num_heads=2, num_layers=1, num_classes=5)
    flat = random_flax_params(source, seed=4)
    write_google_npz(tmp_path / "hybrid.npz", flat, pre_linen=True)
    workdir = str(tmp_path / "run")
    argv = ["--init", str(tmp_path / "hybrid.npz"), "--image-size", "32", "--steps", "2", "--batch-size", "16",
            "--lr", "1e-6", "--warmup-steps", "0", "--eval-every", "2", "--no-progress", "--workdir", workdir]
    assert train.main(argv) == 0
    model = run_config(workdir)
    assert (model["image_size"], model["resnet_layers"], model["num_classes"]) == (32, [1], 10)
    params = final_params(workdir)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 65, 32)  # 4x4 grid resized to 8x8
    # The stem starts from the file's weights (a tiny learning rate keeps it there).
    start = flat["block1/unit1/conv2/kernel"]
    assert np.abs(params["block1"]["unit1"]["conv2"]["kernel"] - start).max() < 1e-4 * np.abs(start).max()


def test_stage_flag_errors(capsys):
    with pytest.raises(SystemExit) as error:
        train.main(["--resnet-layers", "3,x"])
    assert error.value.code == 2
    assert "expected comma-separated unit counts per stage such as '3,4,9', or 'root'" in capsys.readouterr().err
