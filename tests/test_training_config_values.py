"""Values from a --config file are checked as their flags are; impossible hyperparameters are refused up front."""

from __future__ import annotations

import json

import pytest
from train_runs import TINY

from vit_jax import train_cli as train
from vit_jax.config import ConfigError
from vit_jax.training.config import parse_args


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"lr": "fast"}, '"lr" is "fast"; expected a number, as --lr takes'),
        ({"steps": 2.5}, '"steps" is 2.5; expected an integer'),
        ({"batch_size": True}, '"batch_size" is true; expected an integer'),
        ({"augment": 1}, '"augment" is 1; expected true or false'),
        ({"data_path": 3}, '"data_path" is 3; expected a string'),
        ({"resnet_layers": "3,x"}, "expected comma-separated unit counts"),
    ],
    ids=["string-for-float", "fraction-for-int", "bool-for-int", "int-for-bool", "int-for-path", "bad-stages"],
)
def test_config_file_value_of_the_wrong_type_is_one_line(tmp_path, capsys, values, expected):
    path = tmp_path / "options.json"
    path.write_text(json.dumps(values))
    assert train.main(["--config", str(path), "--workdir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(path) in err, err
    assert not (tmp_path / "run").exists()


def test_config_file_values_are_converted_as_flags_would_be(tmp_path):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({"lr": 1, "steps": 4.0, "resnet_layers": [3, 4]}))
    config = parse_args(["--config", str(path)])
    assert (config.lr, config.steps, config.resnet_layers) == (1.0, 4, (3, 4))
    assert isinstance(config.lr, float) and isinstance(config.steps, int)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--lr", "inf"], "--lr must be > 0 and finite, got inf"),
        (["--lr", "nan"], "--lr must be > 0 and finite, got nan"),
        (["--b2", "1.0"], "--b2 must be in [0, 1), got 1.0"),
        (["--b1", "-0.5"], "--b1 must be in [0, 1), got -0.5"),
        (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
        (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
        (["--grad-clip", "nan"], "--grad-clip must be a finite number, got nan"),
    ],
)
def test_impossible_hyperparameters_are_refused_before_compiling(tmp_path, capsys, argv, expected):
    workdir = tmp_path / "run"
    assert train.main(TINY + argv + ["--steps", "2", "--workdir", str(workdir)]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert not workdir.exists()


def test_the_same_limits_hold_for_config_file_values(tmp_path):
    path = tmp_path / "options.json"
    path.write_text('{"lr": Infinity}')
    with pytest.raises(ConfigError, match="--lr must be > 0 and finite, got inf"):
        parse_args(["--config", str(path)])
