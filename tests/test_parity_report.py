"""`python -m parity report`: passing runs over every model option, injected faults, bad input.

Each run is a real comparison of the Flax model and the twin (plus their
float64 runs); a fault injected into the weight mapping or one model must be
caught, named as the first failing layer, and turn the exit code to 1.
"""

from __future__ import annotations

import html
import json
import os

import numpy as np
import pytest
from parity_report_helpers import check_passing_report, flax_param_count, rows, run_report, swap_query_key
from PIL import Image

import vit_jax
import vit_jax.formats.mapping
from parity import harness, judge
from parity.compare import compare, group_rms, norm_floor, pair_sums
from parity.inputs import load_images, random_images
from parity.tolerances import ROUNDING, Criterion
from vit_jax.config import get_config

SMALL = "ViT-testing"  # 16 px, patch 4, hidden 32, 2 heads, 2 layers, 10 classes


# -- fast: one full passing run, one injected fault, bad usage ----------------------------
@pytest.mark.parametrize("kernels", ["reference", "cpu"])
def test_float32_forward_backward_adamw_pass(tmp_path, capsys, kernels):
    code, report = run_report(
        tmp_path, "--config", SMALL, "--set", "gelu=exact", "--set", "layer_norm_eps=1e-5", "--kernels", kernels,
        "--set", "representation_size=24", "--set", "qkv_bias=false", "--optimizer-step", "--steps", "3",
    )
    assert report["config"]["kernels"] == kernels
    config = get_config(SMALL, gelu="exact", layer_norm_eps=1e-5, representation_size=24, qkv_bias=False)
    assert code == 0, capsys.readouterr()
    check_passing_report(report, config, backward=True)
    updates = rows(report, "update")
    assert len(updates) == flax_param_count(config) and all(r["passed"] and r["judged"] for r in updates)
    # the float64 optimizer runs are real: each float32 side sits at rounding distance from its own
    assert all(0 < r["jax_vs_f64"] < 1e-5 and 0 < r["torch_vs_f64"] < 1e-5 for r in updates)
    losses = rows(report, "loss")
    assert len(losses) == 3 and all(r["passed"] for r in losses)
    assert all(abs(r["jax_f64"] - r["torch_f64"]) <= 1e-10 * abs(r["torch_f64"]) != 0 for r in losses)
    assert losses[-1]["jax"] < losses[0]["jax"] and losses[-1]["torch"] < losses[0]["torch"]  # it trains
    assert report["optimizer"]["hyperparameters"]["weight_decay"] == harness.AdamWSettings.weight_decay
    # every artefact is there and self-contained
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["error_vs_depth.png", "loss_curves.png", "report.html", "report.json",
                                       "report.md"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "blocks.1.attn_probs" in page
    md = (out / "report.md").read_text()
    assert md.splitlines()[2].startswith("**PASS**") and "| blocks.0.attn_probs |" in md
    assert "rel_l2 <= 1e-05" in md  # tolerances are printed
    for text in (md, html.unescape(page), json.dumps(report)):  # and the rule, in one paragraph
        assert "||jax - torch|| <= 1 x (||jax - f64 jax|| + ||torch - f64 torch||) + 1e-10 x ||f64 torch||" in text
    assert "rounding ratio" in md and set(report["summary"]["worst_rounding_ratio"]) == set(judge.SECTIONS)
    assert (out / "error_vs_depth.png").read_bytes().startswith(b"\x89PNG")
    assert "PASS" in capsys.readouterr().out


def test_swapped_query_key_mapping_fails_at_first_attention_map(tmp_path, monkeypatch, capsys):
    swap_query_key(monkeypatch)
    code, report = run_report(tmp_path, "--config", SMALL, "--batch", "1")
    assert code == 1
    assert report["verdict"] == "fail"
    assert report["first_failure"]["name"] == "blocks.0.attn_probs"
    forward = {r["name"]: r for r in rows(report, "forward")}
    assert forward["embed"]["passed"] and forward["blocks.0.attn_probs"]["rel_l2"] > 1e-2
    assert forward["blocks.0.attn_probs"]["rounding_ratio"] > 100
    assert not forward["logits"]["passed"]
    assert "first failure: blocks.0.attn_probs" in capsys.readouterr().out
    md = (tmp_path / "out" / "report.md").read_text()
    assert "First failure: `blocks.0.attn_probs`" in md


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "ViT-Q_16"], "unknown preset"),
        (["--config", SMALL, "--set", "num_layer=3"], "did you mean 'num_layers'"),
        (["--config", SMALL, "--batch", "0"], "--batch must be >= 1"),
        (["--config", SMALL, "--dtype", "float16"], "invalid choice"),
        (["--checkpoint", "/nonexistent/model.npz"], "does not exist"),
        (["--config", SMALL, "--images", "/nonexistent/dir"], "is not a directory"),
        ([], "give --config NAME"),
    ],
)
def test_bad_usage_exits_2_without_output(tmp_path, capsys, args, message):
    code, report = run_report(tmp_path, *args)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_image_folder_and_corrupt_image_exit_2(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    assert run_report(tmp_path, "--config", SMALL, "--images", str(folder))[0] == 2
    assert "holds no image files" in capsys.readouterr().err
    (folder / "broken.png").write_bytes(b"not a png")
    assert run_report(tmp_path, "--config", SMALL, "--images", str(folder))[0] == 2
    assert "cannot decode image" in capsys.readouterr().err


# -- fast unit checks of the metric definitions --------------------------------------------
def test_relative_error_floor_turns_noise_on_zero_into_absolute_error():
    reference = np.zeros(100)
    noise = np.full(100, 1e-9)
    plain = compare(noise, reference)
    assert plain.rel_l2 > 1e6 and plain.cosine is None  # meaningless without a floor
    floor = norm_floor(100, typical_rms=1.0, fraction=1e-2)
    floored = compare(noise, reference, floor)
    assert floored.floored and floored.rel_l2 == pytest.approx(1e-8 / floor, rel=1e-6)
    big = np.linspace(1, 2, 100)
    m = compare(big * (1 + 1e-6), big, floor)
    assert not m.floored and m.rel_l2 == pytest.approx(1e-6, rel=1e-6) and m.cosine == pytest.approx(1.0)
    assert group_rms([np.zeros(4), np.ones(4), 2 * np.ones(4)]) == 1.0
    assert compare(np.ones(3), np.ones(4)).problem.startswith("shape")


def test_sums_are_numpys_norms_and_dot_products():
    """The report's own float64 sums (not BLAS) give NumPy's figures to rounding, non-finite values flagged."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 197, 64)), rng.normal(size=(3, 197, 64))
    (s,) = pair_sums([a, b], [(0, 1)])
    want = (np.linalg.norm(a - b), np.linalg.norm(b), np.linalg.norm(a), np.vdot(a, b))
    assert (s.l2, s.ref_norm, s.cand_norm, s.dot) == pytest.approx(want, rel=1e-12)
    assert s.mean_abs == np.mean(np.abs(a - b)) and s.problem is None
    b[0, 0, 0] = np.inf
    assert pair_sums([a, b], [(0, 1)])[0].problem == "non-finite values"


def test_criteria_judge_every_bound():
    m = compare(np.array([1.0, 2.0]) * (1 + 2e-5), np.array([1.0, 2.0]))
    assert Criterion(max_rel_l2=1e-4).judge(m)[0] and not Criterion(max_rel_l2=1e-5).judge(m)[0]
    assert Criterion(max_abs_over_scale=3e-5).judge(m)[0] and not Criterion(max_abs_over_scale=1e-5).judge(m)[0]
    assert not Criterion(min_cosine=0.999).judge(compare(np.array([1.0, 0.0]), np.array([0.0, 1.0])))[0]


def test_rounding_rule_passes_any_rounding_and_fails_a_shift():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=1000)
    scale = float(np.linalg.norm(truth))
    for jax_noise, torch_noise in [(1e-7, 1e-7), (1e-7, -1e-7), (1e-4, 1e-9), (0.0, 0.0)]:
        # opposite rounding on the two sides reaches the bound exactly: k < 1 would fail a correct pair
        direction = rng.normal(size=1000)
        jax, torch = truth + jax_noise * direction, truth + torch_noise * direction
        d, a, b = (float(np.linalg.norm(x - y)) for x, y in ((jax, torch), (jax, truth), (torch, truth)))
        passed, text, ratio = ROUNDING.judge(d, a, b, scale)
        assert passed and ratio <= 1 + 1e-12, text
    shifted = truth + 1e-7 * rng.normal(size=1000) + 1e-6  # a different function, well inside float32 noise bounds
    d, a = float(np.linalg.norm(shifted - truth)), float(np.linalg.norm(shifted - (truth + 1e-6)))
    passed, text, ratio = ROUNDING.judge(d, a, 0.0, scale)
    assert not passed and ratio > 3 and text.startswith("rounding ratio")
    assert not ROUNDING.judge(float("nan"), 0.0, 0.0, 1.0)[0]


def test_images_are_decoded_resized_and_normalised_with_config_statistics(tmp_path):
    config = get_config(SMALL, pixel_mean=(0.5, 0.25, 0.0), pixel_std=(0.5, 0.25, 1.0))
    Image.new("RGB", (40, 30), (255, 0, 51)).save(tmp_path / "a.png")
    images = load_images([str(tmp_path / "a.png")], config)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images[0, 5, 5], [1.0, -1.0, 0.2], atol=1e-6)


# -- slow: every model option, bf16, a LayerNorm fault, checkpoints and real images ---------
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"classifier": "gap", "posemb": "sincos2d", "scan": True},
        {"classifier": "unpooled", "num_classes": 0},
        {"classifier": "token_unpooled", "gelu": "tanh", "representation_size": 24},
    ],
    ids=["gap-sincos-scan", "unpooled-features", "token_unpooled-repr"],
)
def test_model_options_float32_forward_backward_pass(tmp_path, overrides):
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    code, report = run_report(tmp_path, "--config", SMALL, *sets, "--backward")
    assert code == 0
    check_passing_report(report, get_config(SMALL, **overrides), backward=True)


@pytest.mark.slow
def test_bfloat16_forward_backward_adamw_pass(tmp_path):
    code, report = run_report(tmp_path, "--config", SMALL, "--set", "classifier=gap", "--dtype", "bfloat16",
                       "--optimizer-step", "--steps", "3")
    assert code == 0
    check_passing_report(report, get_config(SMALL, classifier="gap"), backward=True)
    logits = rows(report, "forward")[-1]
    assert logits["name"] == "logits" and logits["rel_l2"] <= 2e-2
    assert all(r["passed"] for r in rows(report, "update") + rows(report, "loss"))
    assert "bfloat16 compute on both sides" in report["environment"]["precision"]


@pytest.mark.slow
def test_layer_norm_epsilon_changed_in_the_twin_fails_at_that_block(tmp_path, monkeypatch):
    build = harness.torch_block

    def twin_block_with_wrong_eps(config, index, tensors, device):
        block = build(config, index, tensors, device)
        if index == 1:
            block.norm2.eps += 1e-5  # 1.1e-5 instead of the config's 1e-6, in both twin runs
        return block

    monkeypatch.setattr(harness, "torch_block", twin_block_with_wrong_eps)
    code, report = run_report(tmp_path, "--config", SMALL, "--batch", "1", "--backward")
    assert code == 1
    assert report["first_failure"]["name"] == "blocks.1.mlp"
    forward = {r["name"]: r for r in rows(report, "forward")}
    assert forward["blocks.1.attn"]["passed"] and not forward["blocks.1.mlp"]["passed"]
    # The shift (~5e-6 relative) hides under the float32 bound; the float64 runs and the rounding rule expose it.
    assert forward["blocks.1.mlp"]["rel_l2"] < 1e-5 and forward["blocks.1.mlp"]["f64_jax_vs_torch"] > 1e-7
    assert forward["blocks.1.mlp"]["rounding_ratio"] > 2
    # which checks failed, from the row itself: the absolute float32 bound alone would have passed it
    assert report["first_failure"]["failed_checks"] == ["float64", "rounding"]
    assert any(not r["passed"] for r in rows(report, "gradients"))


@pytest.mark.slow
def test_checkpoints_and_real_images(tmp_path):
    from safetensors.numpy import save_file

    config = get_config(SMALL, head_zero_init=False)
    params = harness.cast_params(vit_jax.init_params(config, 3), np.float32)
    save_file(vit_jax.formats.mapping.flax_to_torch(params, config), str(tmp_path / "timm.safetensors"))
    np.savez(tmp_path / "google.npz", **vit_jax.formats.mapping.flatten(params))
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")

    code, report = run_report(tmp_path, "--checkpoint", str(tmp_path / "timm.safetensors"), "--config", SMALL,
                       "--images", str(folder), "--backward", name="timm")
    assert code == 0
    assert report["weights"].startswith("checkpoint") and report["inputs"].startswith("3 images")
    check_passing_report(report, config, backward=True)

    code, report = run_report(tmp_path, "--checkpoint", str(tmp_path / "google.npz"), "--batch", "1", name="npz")
    assert code == 0 and report["config"]["hidden_size"] == 32
    # the report ran the checkpoint's weights: its logits are the ones these params give
    images = random_images(config, 1, np.random.default_rng(0))  # the CLI's first draw for --seed 0
    expected = vit_jax.VisionTransformer(config).apply({"params": params}, images)
    assert rows(report, "forward")[-1]["ref_norm"] == pytest.approx(float(np.linalg.norm(expected)), rel=1e-5)
