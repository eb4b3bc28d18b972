"""python -m vit_jax.attention_map: rollout arrays and pictures from checkpoints and image files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from checkpoint_writers import hf_config, random_flax_params, randomize, write_google_npz
from PIL import Image

import vit_jax
from vit_jax import get_config
from vit_jax.attention_map import COLOUR_BAR_SPACE, LABEL_LEFT, LABEL_TOP, heat_overlay, main
from vit_jax.data import decode_image_file
from vit_jax.formats.mapping import unflatten
from vit_jax.model import VisionTransformer, apply_with_intermediates

CONFIG = get_config("ViT-testing")  # 16 px, patch 4 (a 4x4 grid), 2 heads, 2 layers, class token


def _write_images(folder) -> list[str]:
    """A non-square grey PNG and a non-square RGB JPEG."""
    rng = np.random.default_rng(0)
    grey, rgb = folder / "grey.png", folder / "wide.jpg"
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(grey)
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(rgb)
    return [str(grey), str(rgb)]


def _weights(folder, config) -> tuple[str, dict]:
    flat = random_flax_params(config)  # random weights: attention far from uniform
    path = folder / f"{config.classifier}_{config.image_hw[1]}.npz"
    write_google_npz(path, flat)
    return str(path), unflatten(flat)


def _model_probs(config, params, image_path: str) -> dict:
    """The Flax model's attention probabilities for one file, preprocessed as a bare weights file is."""
    x = decode_image_file(image_path, config.image_hw, config.pixel_mean, config.pixel_std, config.num_channels, 1.0)
    return apply_with_intermediates(VisionTransformer(config), {"params": params}, x[None], return_attention=True)[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention_map")
    weights, params = _weights(folder, CONFIG)
    return folder, weights, params, _write_images(folder)


def test_jax_and_torch_agree(files, tmp_path, capsys):
    folder, weights, _, images = files
    for framework in ("jax", "torch"):
        assert main([weights, *images, "--out", str(tmp_path / framework), "--framework", framework]) == 0
    for stem in ("grey", "wide"):
        jax_map = np.load(tmp_path / "jax" / f"{stem}_rollout.npy")
        torch_map = np.load(tmp_path / "torch" / f"{stem}_rollout.npy")
        assert jax_map.shape == (4, 4) and jax_map.dtype == np.float32
        # float32 rounding of two forward passes
        assert np.abs(jax_map - torch_map).max() < 1e-5 * np.abs(jax_map).max()
        assert not np.allclose(jax_map, jax_map.mean(), rtol=0.05)  # a map with structure, not a constant


def test_rollout_file_is_the_rollout_of_the_models_attention(files, tmp_path):
    folder, weights, params, images = files
    probs = _model_probs(CONFIG, params, images[1])
    default = vit_jax.attention_rollout(probs, grid_size=(4, 4))[0]
    assert main([weights, images[1], "--out", str(tmp_path / "a")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "a" / "wide_rollout.npy"), default, rtol=1e-5)
    # The options reach the rollout: max fusion, half the entries discarded.
    expected = vit_jax.attention_rollout(probs, "max", 0.5, grid_size=(4, 4))[0]
    assert main([weights, images[1], "--out", str(tmp_path / "b"), "--head-fusion", "max", "--discard-ratio",
                 "0.5"]) == 0
    got = np.load(tmp_path / "b" / "wide_rollout.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.abs(got - default).max() > 0.01


def test_pictures_have_the_expected_size_for_a_non_square_model(tmp_path, capsys):
    config = CONFIG.replace(image_size=(16, 24))  # a 4x6 patch grid
    weights, _ = _weights(tmp_path, config)
    with open(weights + ".json", "w") as f:  # the tensors cannot tell 16x24 from 24x16: the converter's sidecar does
        f.write(config.to_json())
    images = _write_images(tmp_path)
    assert main([weights, *images, "--out", str(tmp_path / "out")]) == 0
    for stem in ("grey", "wide"):
        assert np.load(tmp_path / "out" / f"{stem}_rollout.npy").shape == (4, 6)
        with Image.open(tmp_path / "out" / f"{stem}_rollout.png") as overlay:
            # 16x24 scaled by 14, the smallest integer that reaches 224 px on the short side; PIL sizes are (w, h).
            assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", (336, 224))
        with Image.open(tmp_path / "out" / f"{stem}_heads.png") as heads:
            # 2 layers (rows) x 2 heads (columns) of 4x6 grids at 16 px a patch (64x96), 2 px between and around,
            # with room for the labels (left, top) and the colour bar (right).
            assert (heads.format, heads.size) == ("PNG", (LABEL_LEFT + 2 * 96 + 3 * 2 + COLOUR_BAR_SPACE,
                                                          LABEL_TOP + 2 * 64 + 3 * 2))
    assert "no class token" not in capsys.readouterr().out


def test_overlay_puts_the_heat_where_the_map_is_high():
    image = np.full((64, 96, 3), 128, np.uint8)
    grid_map = np.zeros((4, 6), np.float32)
    grid_map[0, 5] = 1.0  # top-right patch
    out = heat_overlay(image, grid_map).astype(int)
    assert out.shape == (64, 96, 3)
    hot, cold = out[8, 88], out[56, 8]
    assert hot[0] > hot[2] + 60  # red over blue where the map peaks (jet)
    assert cold[2] > cold[0] + 60  # blue over red elsewhere


def test_model_without_class_token_uses_the_mean_of_all_rows_and_says_so(tmp_path, capsys):
    config = CONFIG.replace(classifier="gap")
    weights, params = _weights(tmp_path, config)
    [grey, _] = _write_images(tmp_path)
    assert main([weights, grey, "--out", str(tmp_path / "out")]) == 0
    assert "no class token (classifier 'gap')" in capsys.readouterr().out
    probs = _model_probs(config, params, grey)
    joint = vit_jax.rollout.rollout_matrix(probs)[0]  # (16, 16): every token is a patch
    got = np.load(tmp_path / "out" / "grey_rollout.npy")
    np.testing.assert_allclose(got.ravel(), joint.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)


def _independent_rollout(attentions) -> np.ndarray:
    """The rollout written out directly in torch, as the ViT-pytorch visualisation computes it."""
    joint = None
    for layer in attentions:  # (B, heads, seq, seq)
        fused = layer.double().mean(dim=1)
        fused = fused + torch.eye(fused.shape[-1], dtype=torch.float64)
        fused = fused / fused.sum(dim=-1, keepdim=True)
        joint = fused if joint is None else torch.matmul(fused, joint)
    return joint[:, 0, 1:].numpy()


def test_rollout_matches_one_from_hugging_face_attention(tmp_path):
    from transformers import ViTForImageClassification

    hf = randomize(ViTForImageClassification(hf_config(CONFIG, attn_implementation="eager")), seed=3)
    hf.save_pretrained(tmp_path / "hf")
    [grey, wide] = _write_images(tmp_path)
    assert main([str(tmp_path / "hf"), grey, wide, "--out", str(tmp_path / "out")]) == 0
    config, _ = vit_jax.load_pretrained(tmp_path / "hf")
    for path, stem in ((grey, "grey"), (wide, "wide")):
        x = decode_image_file(path, config.image_hw, config.pixel_mean, config.pixel_std, 3, 1.0)
        with torch.no_grad():
            attentions = hf(pixel_values=torch.from_numpy(x.transpose(2, 0, 1)[None].copy()),
                            output_attentions=True).attentions
        ours = np.load(tmp_path / "out" / f"{stem}_rollout.npy").ravel()
        reference = _independent_rollout(attentions)[0]
        assert np.abs(ours - reference).max() < 1e-5 * reference.max()
        np.testing.assert_allclose(vit_jax.attention_rollout(attentions)[0], reference, rtol=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["missing.png"], "missing.png' does not exist"),
        (["--discard-ratio", "1.5"], "--discard-ratio must be in [0, 1), got 1.5"),
        (["--step", "3"], "--step applies to a training run directory"),
        (["{folder}/sub/grey.png"], "share the name 'grey'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, capsys, extra, message):
    folder, weights, _, images = files
    os.makedirs(folder / "sub", exist_ok=True)
    Image.new("L", (8, 8)).save(folder / "sub" / "grey.png")
    extra = [e.format(folder=folder) for e in extra]
    out = tmp_path / "out"
    assert main([weights, *images, *extra, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attention_map: error: ") and message in err and err.count("\n") == 1
    assert not out.exists() or not os.listdir(out)


def test_output_directory_that_is_a_file_is_reported(files, tmp_path, capsys):
    _, weights, _, images = files
    (tmp_path / "out").write_text("a file")
    assert main([weights, *images, "--out", str(tmp_path / "out")]) == 1
    assert "exists as a file" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "a file"


def test_bad_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"not a checkpoint")
    [grey, _] = _write_images(tmp_path)
    assert main([str(bad), grey, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attention_map: error: ") and "weights.npz" in err and err.count("\n") == 1


@pytest.mark.slow  # a short training run
def test_run_directory_and_train_py_predict(tmp_path, capsys):
    from train_runs import TINY

    from vit_jax import train_cli as train
    run = str(tmp_path / "run")
    assert train.main(["--steps", "2", "--eval-every", "2", *TINY, "--classifier", "token", "--workdir", run]) == 0
    [grey, wide] = _write_images(tmp_path)
    assert main([run, grey, wide, "--out", str(tmp_path / "cli"), "--step", "2"]) == 0
    assert train.main(["predict", "--checkpoint", run, "--attention-map", str(tmp_path / "predict"), grey, wide]) == 0
    printed = capsys.readouterr().out
    assert f"{wide}: " in printed  # the predictions are still printed
    # The run's model: 16 px images in patches of 4, a 4x4 grid.
    for stem in ("grey", "wide"):
        from_cli = np.load(tmp_path / "cli" / f"{stem}_rollout.npy")
        assert from_cli.shape == (4, 4)
        np.testing.assert_array_equal(np.load(tmp_path / "predict" / f"{stem}_rollout.npy"), from_cli)
        with Image.open(tmp_path / "predict" / f"{stem}_heads.png") as heads:
            assert heads.size == (LABEL_LEFT + 2 * 64 + 3 * 2 + COLOUR_BAR_SPACE, LABEL_TOP + 64 + 2 * 2)  # 1 x 2


def test_the_heads_picture_labels_layers_and_heads_and_shows_its_colour_scale():
    from matplotlib import colormaps

    from vit_jax.attention_map import BACKGROUND, CELL_GAP, COLOUR_BAR_WIDTH, heads_picture

    rng = np.random.default_rng(0)
    picture = heads_picture((rng.random((16, 16, 3)) * 255).astype(np.uint8), rng.random((3, 4, 4, 4)))
    cell = 64  # a 4x4 grid at 16 px a patch
    assert picture.shape == (LABEL_TOP + 3 * cell + 4 * CELL_GAP, LABEL_LEFT + 4 * cell + 5 * CELL_GAP +
                             COLOUR_BAR_SPACE, 3)
    for layer in range(3):  # an "L<i>" drawn left of each row
        top = LABEL_TOP + CELL_GAP + layer * (cell + CELL_GAP)
        assert (picture[top : top + cell, :LABEL_LEFT] > BACKGROUND + 50).any(), layer
    for head in range(4):  # an "H<j>" above each column
        left = LABEL_LEFT + CELL_GAP + head * (cell + CELL_GAP)
        assert (picture[:LABEL_TOP, left : left + cell] > BACKGROUND + 50).any(), head
    bar_left = LABEL_LEFT + 4 * cell + 6 * CELL_GAP
    bar = picture[LABEL_TOP + CELL_GAP : LABEL_TOP + 3 * cell + 3 * CELL_GAP, bar_left : bar_left + COLOUR_BAR_WIDTH]
    for row, value in ((0, 1.0), (-1, 0.0)):  # the colour map's top at the top, its bottom at the bottom
        want = np.round(np.asarray(colormaps["jet"](value)[:3]) * 255)
        np.testing.assert_array_equal(bar[row, 0], want)
    text = picture[LABEL_TOP:, bar_left + COLOUR_BAR_WIDTH :]  # "max" and "min" beside it
    assert (text[:20] > BACKGROUND + 50).any() and (text[-20:] > BACKGROUND + 50).any()
