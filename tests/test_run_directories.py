"""A training run read back: as a checkpoint source, after damage, when finished, and against contradicting flags."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import nchw, random_images
from data_writers import write_image_folder
from train_runs import TINY

import vit_jax
import vit_torch_ref
from parity.convert_cli import main as convert_main
from vit_jax import train_cli as train
from vit_jax.formats.mapping import flatten
from vit_jax.formats.read import read_flax_params
from vit_jax.training import setup
from vit_jax.training.checkpoint import Checkpointer, CheckpointError, DamagedCheckpointWarning
from vit_jax.training.config import parse_args
from vit_jax.training.state import TrainState

STEPS = 12
RUN_ARGS = TINY + ["--steps", str(STEPS), "--batch-size", "32", "--checkpoint-every", "4", "--eval-every", "4",
                   "--warmup-steps", "2", "--keep-checkpoints", "5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "run")
    assert train.main(RUN_ARGS + ["--workdir", workdir]) == 0
    return workdir


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    return copy


def saved_params(workdir: str, step: int) -> dict:
    checkpoints = Checkpointer(workdir, read_only=True)
    try:
        return flatten(checkpoints.restore_params(step)[1])
    finally:
        checkpoints.close()


def assert_same(flat_a: dict, flat_b: dict) -> None:
    assert sorted(flat_a) == sorted(flat_b)
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


def snapshot(workdir: str) -> dict:
    """Every file's bytes and modification time."""
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[path] = (f.read(), os.stat(path).st_mtime_ns)
    return out


# -- item 1: a run, its checkpoints/ and a step directory are checkpoint sources -------------------

def test_convert_reads_a_run_its_checkpoints_and_one_step(run_dir, tmp_path, capsys):
    best = Checkpointer(run_dir, read_only=True)
    best_step = best.best_step()
    best.close()
    model = json.load(open(os.path.join(run_dir, "config.json")))["model"]
    cases = [(run_dir, [], best_step), (os.path.join(run_dir, "checkpoints"), ["--step", "4"], 4),
             (os.path.join(run_dir, "checkpoints", "8"), [], 8)]
    for i, (source, flags, step) in enumerate(cases):
        dst = tmp_path / f"out{i}.npz"
        assert convert_main([source, str(dst), "-q", *flags]) == 0, capsys.readouterr().err
        config, params = read_flax_params(dst)
        assert_same(flatten(params), saved_params(run_dir, step))
        # The run's config.json, not the format's defaults, gives the architecture and numerics.
        for field in ("hidden_size", "num_layers", "classifier", "gelu", "layer_norm_eps", "image_size"):
            assert config.to_dict()[field] == model[field], field


def test_a_step_that_is_not_there_or_contradicts_the_directory(run_dir, tmp_path, capsys):
    assert convert_main([run_dir, str(tmp_path / "x.npz"), "--step", "7"]) == 2
    assert "no checkpoint for step 7" in capsys.readouterr().err
    assert convert_main([os.path.join(run_dir, "checkpoints", "8"), str(tmp_path / "x.npz"), "--step", "4"]) == 2
    assert "is step 8, but step 4 was asked for" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_default_step_is_the_best_by_eval_accuracy_else_the_latest(run_dir, tmp_path):
    workdir = str(tmp_path / "crafted")
    os.makedirs(workdir)
    shutil.copy(os.path.join(run_dir, "config.json"), workdir)
    base = saved_params(run_dir, STEPS)
    from vit_jax.formats.mapping import unflatten

    def state(step, scale):
        params = unflatten({k: v * scale for k, v in base.items()})
        return TrainState(step=np.asarray(step, np.int32), params=params, opt_state={"mu": params},
                          rng=np.zeros(2, np.uint32))

    checkpoints = Checkpointer(workdir)
    checkpoints.save(1, state(1, 1.0), {}, {"accuracy": 0.9})
    checkpoints.save(2, state(2, 2.0), {}, {"accuracy": 0.1})
    checkpoints.wait()
    checkpoints.close()
    _, params = vit_jax.load_pretrained(workdir)
    np.testing.assert_array_equal(params["head"]["bias"], base["head/bias"])  # step 1, the best
    _, params = vit_jax.load_pretrained(workdir, step=2)
    np.testing.assert_array_equal(params["head"]["bias"], 2 * base["head/bias"])


def test_load_pretrained_in_jax_and_torch_read_a_run(run_dir):
    config, params = vit_jax.load_pretrained(run_dir, step=8)
    assert_same(flatten(params), saved_params(run_dir, 8))
    torch_config, model = vit_torch_ref.load_pretrained(os.path.join(run_dir, "checkpoints"), step=8)
    images = random_images(config, batch=3)
    expected = np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images))
    with torch.no_grad():
        got = model(nchw(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_train_init_from_a_run_starts_from_the_chosen_step(run_dir):
    config = parse_args(["--init", run_dir, "--init-step", "4"])
    model, params = setup.create_model(config, 10, None)
    flat, saved = flatten(params), saved_params(run_dir, 4)
    for key in saved:
        if not key.startswith("head/"):  # fine-tuning puts a fresh head on
            np.testing.assert_array_equal(flat[key], saved[key], err_msg=key)
    assert model.hidden_size == 32


def test_init_refuses_non_finite_weights_unless_asked(tmp_path, capsys):
    from checkpoint_writers import random_flax_params, write_google_npz

    config = vit_jax.get_config("ViT-testing")
    flat = random_flax_params(config)
    flat["embedding/bias"][0] = np.nan
    write_google_npz(tmp_path / "nan.npz", flat)
    args = ["--init", str(tmp_path / "nan.npz"), "--model", "ViT-testing", "--steps", "1", "--no-progress",
            "--workdir", str(tmp_path / "run")]
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "embedding/bias" in err and "--allow-nonfinite-init" in err, err
    assert not os.path.exists(tmp_path / "run")
    _, params = setup.create_model(parse_args(args[:4] + ["--allow-nonfinite-init"]), 10, None)
    assert np.isnan(params["embedding"]["bias"][0])


# -- item 3: a damaged latest checkpoint falls back to the newest intact one -------------------

def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "ocdbt data": lambda d: [_truncate(p) for p in glob.glob(os.path.join(d, "state", "**", "d", "*"), recursive=True)],
    "_METADATA": lambda d: _truncate(os.path.join(d, "state", "_METADATA")),
    "manifest.ocdbt": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "data/metadata": lambda d: _truncate(os.path.join(d, "data", "metadata")),
    "emptied": lambda d: (shutil.rmtree(d), os.mkdir(d)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_restore_names_the_damaged_step_and_falls_back(run_copy, damage):
    DAMAGE[damage](os.path.join(run_copy, "checkpoints", str(STEPS)))
    template = saved_state_template(run_copy)
    checkpoints = Checkpointer(run_copy, read_only=True)
    try:
        with pytest.warns(DamagedCheckpointWarning, match=f"checkpoint step {STEPS} .* is damaged"):
            step, state, _ = checkpoints.restore_latest(template)
        assert step == STEPS - 4
        assert_same(flatten(state.params), saved_params(run_copy, STEPS - 4))
        with pytest.raises(CheckpointError, match=f"checkpoint step {STEPS} .* is damaged"):
            checkpoints.first_intact(lambda s: checkpoints.restore(s, template), STEPS)
    finally:
        checkpoints.close()


def saved_state_template(workdir: str):
    config = parse_args(["--resume", "--workdir", workdir])
    return setup.prepare(config).host_state


def test_eval_only_and_predict_fall_back_from_a_damaged_checkpoint(run_copy, tmp_path, capsys):
    DAMAGE["ocdbt data"](os.path.join(run_copy, "checkpoints", str(STEPS)))
    assert train.main(["--eval-only", "--workdir", run_copy]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["step"] == STEPS - 4
    assert "Traceback" not in captured.err

    write_image_folder(str(tmp_path / "images"), {"a": 1})
    image = str(tmp_path / "images" / "a" / "000.png")
    with pytest.warns(DamagedCheckpointWarning, match=f"step {STEPS}"):
        assert train.main(["predict", "--checkpoint", run_copy, image]) == 0
    assert f"checkpoint step {STEPS - 4} of" in capsys.readouterr().out
    # Asking for the damaged step by number is an error, not a silent substitute.
    assert train.main(["predict", "--checkpoint", run_copy, "--step", str(STEPS), image]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint step {STEPS}" in err and "damaged" in err and "Traceback" not in err


def test_resume_moves_a_damaged_step_aside_and_continues_from_the_newest_intact(run_copy, capsys):
    DAMAGE["emptied"](os.path.join(run_copy, "checkpoints", str(STEPS)))
    assert train.main(["--resume", "--workdir", run_copy, "--steps", str(STEPS + 4)]) == 0, capsys.readouterr().err
    assert os.path.isdir(os.path.join(run_copy, "damaged_checkpoints", str(STEPS)))
    checkpoints = Checkpointer(run_copy, read_only=True)
    assert STEPS in checkpoints.steps() and STEPS + 4 in checkpoints.steps()  # step 12 trained and saved again
    checkpoints.close()
    rows = [json.loads(line) for line in open(os.path.join(run_copy, "metrics.jsonl"))]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == STEPS + 4


# -- item 2: --resume with nothing left to train changes nothing -----------------------------------

@pytest.mark.parametrize("extra", [[], ["--steps", "8"]], ids=["finished", "steps-below-latest"])
def test_resume_with_nothing_to_train_exits_0_and_changes_nothing(run_copy, capsys, extra):
    before = snapshot(run_copy)
    assert train.main(["--resume", "--workdir", run_copy, *extra]) == 0
    out = capsys.readouterr().out
    assert "is complete" in out and f"step {STEPS}" in out
    assert snapshot(run_copy) == before


def test_resume_after_a_kill_after_the_last_save_exits_0(run_copy, capsys):
    os.remove(os.path.join(run_copy, "summary.json"))  # killed between the last checkpoint and the summary
    before = snapshot(run_copy)
    assert train.main(["--resume", "--workdir", run_copy]) == 0
    assert "is complete" in capsys.readouterr().out
    assert snapshot(run_copy) == before


# -- item 8: contradictions are refused ------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (["--hidden-size", "64"], "--hidden-size 64"),
    (["--model", "ViT-testing"], "--model ViT-testing"),
    (["--num-layers", "2"], "--num-layers 2"),
    (["--channels", "1"], "--channels 1"),
])
def test_resume_with_a_different_model_flag_is_refused(run_copy, capsys, flags, named):
    before = snapshot(run_copy)
    for mode in ("--resume", "--eval-only"):
        assert train.main([mode, "--workdir", run_copy, *flags]) == 1
        err = capsys.readouterr().err
        assert named in err and "differs from the run's" in err and "Traceback" not in err, err
    assert snapshot(run_copy) == before
    # The same value as the run's is no contradiction.
    assert setup.check_same_model(parse_args(["--resume", "--workdir", run_copy, "--hidden-size", "32"]),
                                  json.load(open(os.path.join(run_copy, "config.json"))), run_copy) is None


def test_workdir_that_is_a_file_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    for extra in ([], ["--resume"]):
        assert train.main(TINY + ["--steps", "1", "--workdir", str(path), *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "is a file" in err and "Traceback" not in err, err
    assert path.read_text() == "not a run"


def test_predict_with_a_config_that_does_not_match_the_checkpoint(run_copy, tmp_path, capsys):
    config_path = os.path.join(run_copy, "config.json")
    run = json.load(open(config_path))
    run["model"]["mlp_dim"] = 96
    json.dump(run, open(config_path, "w"))
    write_image_folder(str(tmp_path / "images"), {"a": 1})
    assert train.main(["predict", "--checkpoint", run_copy, str(tmp_path / "images" / "a" / "000.png")]) == 1
    err = capsys.readouterr().err
    assert "config.json does not match checkpoint step" in err and "MlpBlock_0/Dense_0" in err, err
    assert "(64,) in the checkpoint, (96,) by the config" in err
    assert "Traceback" not in err


def test_predict_refuses_special_files(run_dir, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block forever
    assert train.main(["predict", "--checkpoint", run_dir, str(tmp_path / "pipe.png")]) == 1
    err = capsys.readouterr().err
    assert "pipe.png' is a FIFO, not an image file" in err and "Traceback" not in err, err


# -- item 9: runs that cannot mean anything warn ---------------------------------------------------

def test_one_class_data_and_a_batch_larger_than_the_data_warn(tmp_path):
    write_image_folder(str(tmp_path / "data" / "train"), {"only": 4})
    write_image_folder(str(tmp_path / "data" / "val"), {"only": 2})
    args = TINY + ["--dataset", "folder", "--data-path", str(tmp_path / "data"), "--batch-size", "8", "--steps", "1",
                   "--warmup-steps", "0", "--workdir", str(tmp_path / "run")]
    with pytest.warns(UserWarning) as record:
        assert train.main(args) == 0
    messages = [str(w.message) for w in record]
    assert any("single class" in m for m in messages), messages
    assert any("--batch-size 8 is larger than the training set (4 examples)" in m for m in messages), messages


def test_a_two_class_dataset_with_a_small_batch_does_not_warn(tmp_path):
    write_image_folder(str(tmp_path / "data" / "train"), {"a": 4, "b": 4})
    write_image_folder(str(tmp_path / "data" / "val"), {"a": 1, "b": 1})
    config = parse_args(["--dataset", "folder", "--data-path", str(tmp_path / "data"), "--batch-size", "8"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        setup.warn_about_data(config, setup.load_data(config))


def test_help_says_which_step_what_happens_on_damage_and_on_ctrl_c(capsys):
    from vit_jax.training.config import build_parser

    text = " ".join(build_parser().format_help().split())
    for phrase in ("best step by eval accuracy, else the latest", "damaged checkpoint is named in a warning",
                   "Ctrl-C or SIGTERM stops within seconds (exit 130 / 143)", "--init-step", "--allow-nonfinite-init"):
        assert phrase in text, phrase
    assert convert_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--step N picks another", "a damaged --step N is an error", "Ctrl-C or SIGTERM exits 130 / 143",
                   "--allow-nonfinite", "readers refuse"):
        assert phrase in text, phrase


# -- garbage metrics in an older step warn and fall back for every reader -----------------

def test_garbage_metrics_in_an_older_step_warn_and_every_reader_uses_the_intact_steps(run_copy, tmp_path, capsys):
    with open(os.path.join(run_copy, "checkpoints", "4", "metrics", "metrics"), "w") as f:
        f.write("garbage{")
    damaged = "checkpoint step 4 .* is damaged \\(its metrics file: JSONDecodeError"
    with pytest.warns(DamagedCheckpointWarning, match=damaged):
        assert convert_main([run_copy, str(tmp_path / "out.npz"), "-q"]) == 0
    with pytest.warns(DamagedCheckpointWarning, match=damaged):
        config, params = vit_jax.load_pretrained(run_copy)
    assert_same(flatten(params), saved_params(run_copy, STEPS))  # the best intact step (the last one here)
    with pytest.warns(DamagedCheckpointWarning, match=damaged):
        assert train.main(["--eval-only", "--workdir", run_copy]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == STEPS
    with pytest.warns(DamagedCheckpointWarning, match=damaged):  # asked for by number: an error naming it
        assert train.main(["--eval-only", "--workdir", run_copy, "--eval-step", "4"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint step 4" in err and "is damaged (its metrics file" in err and "Traceback" not in err


# -- predict reads any weights file, as attention_map does -------------------------------

def test_predict_reads_a_converted_weights_file_like_its_run(run_dir, tmp_path, capsys):
    write_image_folder(str(tmp_path / "images"), {"a": 2})
    images = sorted(glob.glob(str(tmp_path / "images" / "a" / "*.png")))
    weights = str(tmp_path / "digits.safetensors")
    assert convert_main([run_dir, weights, "--step", str(STEPS), "-q"]) == 0
    assert train.main(["predict", "--checkpoint", run_dir, "--step", str(STEPS), *images]) == 0
    from_run = capsys.readouterr().out.splitlines()
    assert train.main(["predict", "--checkpoint", weights, *images]) == 0
    from_file = capsys.readouterr().out.splitlines()
    assert from_file[0] == f"weights {weights}"
    assert from_file[1:] == from_run[1:]  # digits: classes 0-9 by name and number alike, no eval crop
    assert train.main(["predict", "--checkpoint", weights, "--step", "4", *images]) == 1
    assert "--step applies to a training run directory" in capsys.readouterr().err
