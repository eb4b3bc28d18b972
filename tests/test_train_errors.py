"""Bad input at the train.py command line: clear errors, non-zero exit, nothing half-written."""

from __future__ import annotations

import json
import os

import pytest
from data_writers import class_pattern, save_image, write_image_folder
from train_runs import TINY

from vit_jax import train_cli as train
from vit_jax.config import ConfigError
from vit_jax.training.config import build_parser, parse_args

FAST = TINY + ["--steps", "2", "--batch-size", "8", "--warmup-steps", "0"]


def fails(argv, capsys, *expected: str, workdir=None) -> None:
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    if workdir is not None:
        assert not os.path.exists(workdir), "a failed run left output behind"


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda root: None, "does not exist"),
        (lambda root: os.makedirs(root), "no class subfolders"),
        (lambda root: (write_image_folder(root, {"a": 3}), os.makedirs(os.path.join(root, "empty"))), "empty"),
    ],
    ids=["missing", "empty", "class-without-images"],
)
def test_unusable_image_folders(tmp_path, capsys, setup, expected):
    root = str(tmp_path / "data")
    setup(root)
    workdir = str(tmp_path / "run")
    fails(FAST + ["--dataset", "folder", "--data-path", root, "--workdir", workdir], capsys, root, expected,
          workdir=workdir)


def _add_corrupt_file(root: str) -> str:
    bad = os.path.join(root, "b", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really an image")
    return bad


def test_corrupt_image_is_an_error_on_request(tmp_path, capsys):
    write_image_folder(str(tmp_path / "data"), {"a": 8, "b": 8})
    bad = _add_corrupt_file(str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    argv = FAST + ["--dataset", "folder", "--data-path", str(tmp_path / "data"), "--on-corrupt", "error",
                   "--steps", "6", "--workdir", workdir]
    fails(argv, capsys, "broken.png", workdir=workdir)
    assert os.path.exists(bad)


@pytest.mark.slow
def test_mixed_modes_train_and_a_corrupt_image_is_skipped_and_counted_by_default(tmp_path):
    root = tmp_path / "data"
    for label, name in enumerate(("a", "b")):
        for i, mode in enumerate(("L", "RGBA", "RGB", "P", "LA", "I;16") * 2):
            save_image(str(root / name / f"{i}.png"), class_pattern(label), mode)
    _add_corrupt_file(str(root))
    workdir = str(tmp_path / "run")
    argv = FAST + ["--dataset", "folder", "--data-path", str(root), "--steps", "6", "--workdir", workdir]
    assert train.main(argv) == 0
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["skipped_corrupt_files"] == 1


@pytest.mark.parametrize("lr", ["0", "-1e-3"])
def test_non_positive_learning_rate(tmp_path, capsys, lr):
    workdir = str(tmp_path / "run")
    fails(FAST + [f"--lr={lr}", "--workdir", workdir], capsys, "--lr must be > 0", workdir=workdir)


def test_unknown_preset(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    fails(FAST + ["--model", "ViT-Q_16", "--workdir", workdir], capsys, "unknown preset 'ViT-Q_16'", workdir=workdir)


def test_unknown_flag_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--learning-rate", "1e-3"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning-rate" in capsys.readouterr().err


def test_existing_workdir_needs_resume(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("someone else's run")
    fails(FAST + ["--workdir", str(tmp_path)], capsys, "already holds files; pass --resume")
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_resume_without_a_run(tmp_path, capsys):
    fails(["--resume", "--workdir", str(tmp_path / "nothing")], capsys, "not a run directory")


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    argv = TINY + ["--lr", "1e9", "--grad-clip", "0", "--warmup-steps", "0", "--label-smoothing", "0",
                   "--batch-size", "32", "--steps", "20", "--checkpoint-every", "1", "--eval-every", "1000",
                   "--log-every", "1", "--workdir", workdir]
    fails(argv, capsys, "loss became", "last good checkpoint is step", "--resume --workdir")


def test_config_file_is_overridden_by_flags(tmp_path):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"lr": 0.01, "batch_size": 64, "optimizer": "sgd"}))
    config = parse_args(["--config", str(path), "--batch-size", "32"])
    assert (config.lr, config.batch_size, config.optimizer) == (0.01, 32, "sgd")
    path.write_text(json.dumps({"batch_sise": 64}))
    with pytest.raises(ConfigError, match="'batch_sise' \\(did you mean 'batch_size'\\?\\)"):
        parse_args(["--config", str(path)])


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ("--batch-size", "--lr", "--init", "--freeze-backbone", "--parallel", "--coordinator-address",
                 "--resume", "--export-torch", "--eval-only", "--mixup-alpha", "--accum-steps", "--config"):
        assert flag in text
    assert "global batch size" in text
