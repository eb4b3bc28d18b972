"""What the command lines print: every default in --help, and no noise around the real output."""

from __future__ import annotations

import argparse
import logging
import re

import pytest
from checkpoint_writers import random_flax_params, write_google_npz

from parity import convert_cli, report_cli
from vit_jax import get_config
from vit_jax import predict as predict_cli
from vit_jax.training import config as train_config

PARSERS = {
    "train.py": train_config.build_parser,
    "train.py predict": predict_cli.build_parser,
    "parity convert": convert_cli.build_parser,
    "parity report": report_cli.build_parser,
}


def option_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's help paragraph from the formatted --help, whitespace collapsed."""
    text = parser.format_help()
    blocks = re.split(r"\n(?=  -)", text)
    return {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks if block.startswith("  -")}


@pytest.mark.parametrize("name", PARSERS)
def test_help_names_every_default_once(name):
    parser = PARSERS[name]()
    helps = option_help(parser)
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        text = helps[action.option_strings[0]]
        assert text.count("(default") <= 1 and "default: None" not in text, text
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # off unless given
        has_default = action.default not in (None, argparse.SUPPRESS, []) and not action.required and not switch
        if name == "train.py" and action.dest != "config":  # defaults SUPPRESSed; the dataclass's are named
            field = train_config.TrainConfig.__dataclass_fields__[action.dest]
            has_default = field.default is not None or action.dest in train_config.MODEL_OVERRIDES
        if has_default:
            assert "default" in text, f"{name} {action.option_strings[0]}: no default in {text!r}"


def test_train_help_shows_the_dataclass_defaults():
    helps = option_help(train_config.build_parser())
    assert "(default: 0.002)" in helps["--lr"]
    assert "(default: ViT-digits)" in helps["--model"]
    assert "(default: the preset's)" in helps["--num-layers"]
    assert "(default: False)" in helps["--resume"]


def test_read_only_checkpoints_open_without_orbax_warning(tmp_path, caplog):
    from vit_jax.training.checkpoint import Checkpointer

    (tmp_path / "checkpoints").mkdir()
    with caplog.at_level(logging.WARNING):
        Checkpointer(str(tmp_path), read_only=True).close()
        logging.getLogger("absl").warning("an unrelated absl warning")
    assert "read only" not in caplog.text
    assert "an unrelated absl warning" in caplog.text  # only that one message is dropped


def test_small_conversion_prints_no_per_tensor_lines(tmp_path, capsys):
    write_google_npz(tmp_path / "small.npz", random_flax_params(get_config("ViT-testing")))
    assert convert_cli.main([str(tmp_path / "small.npz"), str(tmp_path / "small.safetensors")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[0] for line in lines] == ["read", "writing", "wrote"], lines
