"""`python -m parity report` fails on a one-side optimizer bug and names the first updated parameter it moves.

Each fault is injected into one framework only (both its low-precision and its
float64 run, as a real bug would be). The forward pass and the gradients are
untouched, so they must still pass; the first failing row is an updated
parameter, caught by the float64 agreement and far outside the rounding rule.
"""

from __future__ import annotations

import json

import optax
import optax.tree
import pytest
import torch
from parity_report_helpers import swap_query_key

from parity import harness
from parity.report_cli import main

SMALL = "ViT-testing"  # 16 px, patch 4, hidden 32, 2 heads, 2 layers, 10 classes
FIRST_DECAYED_VECTOR = "Transformer/encoderblock_0/LayerNorm_0/scale"  # biases and cls start at 0: no decay to differ


def jax_eps_1e6(monkeypatch):
    adamw = optax.adamw
    monkeypatch.setattr(optax, "adamw", lambda lr, b1, b2, eps, **kw: adamw(lr, b1, b2, 1e-6, **kw))


def torch_weight_decay_10_percent_larger(monkeypatch):
    class AdamW(torch.optim.AdamW):
        def __init__(self, params, weight_decay, **kw):
            super().__init__(params, weight_decay=weight_decay * 1.1, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)


def jax_without_bias_correction(monkeypatch):
    monkeypatch.setattr(optax.tree, "bias_correction", lambda moment, decay, count: moment)


def torch_no_decay_on_vectors(monkeypatch):
    """The common recipe (no decay on biases, LayerNorm and tokens) on one side only."""

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, weight_decay, **kw):
            params = list(params)
            groups = [{"params": [p for p in params if p.ndim > 1]},
                      {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
            super().__init__(groups, weight_decay=weight_decay, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inject, first",
    [
        (jax_eps_1e6, "embedding/kernel"),
        (torch_weight_decay_10_percent_larger, "embedding/kernel"),
        (jax_without_bias_correction, "embedding/kernel"),
        (torch_no_decay_on_vectors, FIRST_DECAYED_VECTOR),
    ],
    ids=["eps-1e-6", "weight-decay-x1.1", "no-bias-correction", "decay-mask"],
)
def test_one_side_optimizer_bug_fails_at_first_moved_parameter(tmp_path, monkeypatch, capsys, inject, first):
    inject(monkeypatch)
    out = tmp_path / "out"
    code = main(["--config", SMALL, "--batch", "1", "--optimizer-step", "--steps", "2", "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and report["verdict"] == "fail"
    failure = report["first_failure"]
    assert (failure["section"], failure["name"]) == ("update", first)
    assert f"first failure: {first} (update)" in capsys.readouterr().out
    # a different function: the float64 runs disagree and rounding cannot explain the difference
    assert failure["f64_jax_vs_torch"] > 1e-8 and failure["rounding_ratio"] > 2
    by_section = {s: [r for r in report["rows"] if r["section"] == s] for s in ("forward", "gradients", "loss")}
    assert all(r["passed"] for r in by_section["forward"] + by_section["gradients"])
    # the first loss comes before any update; the second sees the wrong step
    assert by_section["loss"][0]["passed"] and not by_section["loss"][1]["passed"]


def twin_layer_norm_eps_larger_in_block_1(monkeypatch):
    build = harness.torch_block

    def block(config, index, tensors, device):
        module = build(config, index, tensors, device)
        if index == 1:
            module.norm2.eps += 1e-5
        return module

    monkeypatch.setattr(harness, "torch_block", block)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inject, first",
    [
        (jax_eps_1e6, ("update", "embedding/kernel")),
        (torch_weight_decay_10_percent_larger, ("update", "embedding/kernel")),
        (twin_layer_norm_eps_larger_in_block_1, ("forward", "blocks.1.mlp")),
        (swap_query_key, ("forward", "blocks.0.attn_probs")),
    ],
    ids=["eps-1e-6", "weight-decay-x1.1", "layer-norm-eps", "query-key-swap"],
)
def test_one_side_bug_fails_in_bfloat16(tmp_path, monkeypatch, inject, first):
    """bf16 compute hides these bugs under its own rounding; the float64 runs of the same report do not."""
    inject(monkeypatch)
    out = tmp_path / "out"
    optimizer = ["--optimizer-step", "--steps", "1"] if first[0] == "update" else []
    code = main(["--config", SMALL, "--batch", "1", "--dtype", "bfloat16", *optimizer, "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert code == 1 and (report["first_failure"]["section"], report["first_failure"]["name"]) == first
    assert report["first_failure"]["f64_jax_vs_torch"] > 1e-8
