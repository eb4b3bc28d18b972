"""The block-by-block parity report gives the rows of the former whole-model report, within float rounding.

`python -m parity report` runs each framework one block at a time (tests/parity_full_model.py keeps the
whole-model runs it replaced). The same weights, images and labels go through both, the same judge
turns each into rows, and every row must match: names, shapes, verdicts exactly; the torch side's
figures and the forward rows to float rounding of a norm; figures that are themselves rounding
distances (rel L2 of jax vs torch, each side vs its float64 run) within the rounding both runs show.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from parity_full_model import full_model_rows

from parity import harness, inputs
from parity.report_cli import build_parser, load_inputs, load_model, main
from vit_jax.formats.mapping import unflatten
from vit_jax.params import to_layout

IDENTITY = ("section", "name", "shape", "judged", "passed", "torch_name")
ROUNDING_FIGURES = ("rel_l2", "jax_vs_f64", "torch_vs_f64", "mean_abs")


def block_report(tmp_path, argv: list[str]) -> dict:
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["verdict"] == "pass", report["first_failure"]
    return report


def reference_rows(argv: list[str]) -> list[dict]:
    """The same weights, images and labels as the report's (its random draws, in its order), whole-model runs."""
    args = build_parser().parse_args([*argv, "--out", "unused"])
    config, master, _ = load_model(args)  # per-block '/'-paths (a checkpoint's read lazily): the tree apply takes
    params = to_layout(unflatten(dict(master)), config)
    rng = np.random.default_rng(args.seed)
    images, _ = load_inputs(args, config, rng)
    targets = inputs.make_targets(config, images.shape[0], rng)
    settings = harness.AdamWSettings(args.lr, weight_decay=args.weight_decay) if args.optimizer_step else None
    return full_model_rows(config, params, images, targets, settings, args.steps)


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def check_same_rows(new: list[dict], old: list[dict]) -> None:
    assert [tuple(r.get(k) for k in IDENTITY) for r in new] == [tuple(r.get(k) for k in IDENTITY) for r in old]
    for a, b in zip(new, old):
        if not a["judged"]:  # rounding noise on both sides (an exactly-zero gradient): shown, not judged
            continue
        where = f"{a['section']} {a['name']}"
        after_a_step = a["section"] == "loss" and a["name"] != "step 1"  # Adam-amplified rounding, checked below
        # the same tensors: the torch norms agree to float32 rounding, directions to far better than any bound
        assert close(a["ref_norm"], b["ref_norm"], 1e-5) or after_a_step, where
        if a["cosine"] is not None:
            assert abs(a["cosine"] - b["cosine"]) <= 1e-6, where
        if a["section"] == "forward":  # the same per-block computations: the same figures
            for key in ("rel_l2", "jax_vs_f64", "torch_vs_f64", "max_abs", "rounding_ratio"):
                assert close(a[key], b[key], 1e-6), (where, key, a[key], b[key])
        if a["section"] == "gradients":  # torch runs the same autograd ops, block by block
            assert close(a["torch_vs_f64"], b["torch_vs_f64"], 1e-6), where
        # rounding figures move by at most the rounding of the two runs (triangle inequality)
        rounding = a["jax_vs_f64"] + a["torch_vs_f64"] + b["jax_vs_f64"] + b["torch_vs_f64"]
        for key in ROUNDING_FIGURES[:3]:
            assert abs(a[key] - b[key]) <= rounding + 1e-12, (where, key, a[key], b[key])
        assert max(a["f64_jax_vs_torch"], b["f64_jax_vs_torch"]) <= 1e-10, where
        if a["section"] == "loss":  # after a step the float32 losses inherit Adam's amplified rounding
            checks = (("jax_f64", 1e-9), ("torch_f64", 1e-9)) + (() if after_a_step else (("jax", 1e-5),
                                                                                         ("torch", 1e-5)))
            for key, rel in checks:
                assert close(a[key], b[key], rel), (where, key, a[key], b[key])


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "ViT-Ti_16", "--set", "num_layers=2", "--seed", "3", "--optimizer-step", "--steps", "2"],
        ["--config", "ViT-S_16", "--set", "num_layers=2", "--seed", "4", "--backward"],
    ],
    ids=["Ti16-2-layers-adamw", "S16-2-layers-backward"],
)
def test_block_by_block_rows_equal_whole_model_rows(tmp_path, argv):
    report = block_report(tmp_path, argv)
    check_same_rows(report["rows"], reference_rows(argv))
