"""Helpers for the parity report's tests: run the report CLI, read its rows, check that a passing report is
complete, and a test-only mapping fault."""

from __future__ import annotations

import dataclasses
import json

import vit_jax.formats.mapping
from parity.report_cli import main
from parity.tolerances import TOLERANCES


def run_report(tmp_path, *args: str, name: str = "out") -> tuple[int, dict]:
    out = tmp_path / name
    code = main([*args, "--out", str(out)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return code, report


def rows(report: dict, section: str) -> list[dict]:
    return [r for r in report["rows"] if r["section"] == section]


def flax_param_count(config) -> int:
    return sum(len(rule.flax) for rule in vit_jax.formats.mapping.param_rules(config))


def check_passing_report(report: dict, config, backward: bool) -> None:
    """A passing report is complete: every canonical layer, every parameter, real numbers."""
    assert report["verdict"] == "pass" and report["first_failure"] is None
    forward = rows(report, "forward")
    assert [r["name"] for r in forward] == config.layer_names(attention=True)
    tol = TOLERANCES[report["dtype"]]
    # every judged row is explained by rounding: k = 1 is the triangle inequality
    for r in report["rows"]:
        assert r["failed_checks"] == [], r
        if r["judged"]:
            assert r["rounding_ratio"] <= tol.rounding.k + 1e-6 and r["f64_jax_vs_torch"] <= 1e-10, r
    for r in forward:
        assert r["passed"] and r["judged"], r
        if report["dtype"] == "float32":
            assert r["rel_l2"] <= tol.layer.max_rel_l2
            # each side sits at float32 rounding distance from its own float64 run ...
            assert r["jax_vs_f64"] < 1e-5 and r["torch_vs_f64"] < 1e-5
        else:
            assert r["cosine"] >= tol.layer.min_cosine
            assert 1e-5 < r["jax_vs_f64"] < 0.1  # bf16 really ran in bf16
        # ... and the two float64 runs agree to float64 rounding: the same function.
        assert r["f64_jax_vs_torch"] < 1e-12, r
    if backward:
        grads = rows(report, "gradients")
        assert len(grads) == flax_param_count(config)
        assert all(r["passed"] for r in grads)
        assert all(r["f64_jax_vs_torch"] < 1e-10 for r in grads if r["judged"])
        # only the key bias (softmax ignores it) has an exactly-zero gradient
        not_judged = {r["name"] for r in grads if not r["judged"]}
        assert not_judged == set(report["zero_gradient_params"])
        assert all(name.endswith("key/bias") for name in not_judged)
        assert len(not_judged) == (config.num_layers if config.qkv_bias else 0)


def swap_query_key(monkeypatch):
    """Test-only fault: the mapping moves Flax's query kernel into torch's k slot and vice versa."""
    original = vit_jax.formats.mapping.param_rules

    def broken(config):
        rules = original(config)
        return [
            dataclasses.replace(r, flax=(r.flax[1], r.flax[0], r.flax[2])) if r.torch.endswith("attn.qkv.weight") else r
            for r in rules
        ]

    monkeypatch.setattr(vit_jax.formats.mapping, "param_rules", broken)
