"""The parity report on SigLIP's MAP head and EVA-02's rotary embedding: each its own row, and each classic
port mistake, injected into the PyTorch twin only, fails the report at that row.

One tiny config holds both (rotary embedding with q/v biases, SwiGLU with sub-LN, MAP head).
"""

from __future__ import annotations

import json

import pytest
import torch

from parity.report_cli import main
from vit_jax.config import ViTConfig
from vit_torch_ref import heads, model, rope

CONFIG = ViTConfig(name="rope-map-testing", image_size=16, patch_size=4, hidden_size=32, mlp_dim=48, num_heads=2,
                   num_layers=2, num_classes=5, classifier="map", gelu="tanh", rope=True, key_bias=False,
                   mlp_type="swiglu", mlp_norm=True, rope_ref_grid=(3, 3))


def report(tmp_path, *flags):
    (tmp_path / "c.json").write_text(CONFIG.to_json())
    code = main(["--config", str(tmp_path / "c.json"), "--batch", "2", "--out", str(tmp_path / "out"), *flags])
    return code, json.loads((tmp_path / "out" / "report.json").read_text())


@pytest.mark.slow  # ~14 s on 2 cores
def test_report_passes_with_rotary_and_map_rows(tmp_path):
    code, data = report(tmp_path, "--backward")
    rows = {r["name"]: r for r in data["rows"] if r["section"] == "forward"}
    assert code == 0 and data["verdict"] == "pass"
    for name in ("blocks.0.rope", "blocks.1.rope", "pool.attn", "pool"):
        assert rows[name]["passed"], name


def rotate_halves(monkeypatch):
    """GPT-NeoX's pairing (x_j with x_j+d/2) where EVA-02 pairs neighbours (x_2j with x_2j+1): table and turn."""
    def table(grid, ref_grid, head_dim):
        t = rope.rope_table(grid, ref_grid, head_dim)
        return torch.cat([t[..., 0::2], t[..., 0::2]], dim=-1)

    def turn(x):
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    monkeypatch.setattr(model, "rope_table", table)
    monkeypatch.setattr(rope, "rotate_pairs", turn)


def map_without_residual(monkeypatch):
    forward = heads.AttentionPool.forward

    def no_residual(self, x):
        pooled, attn = forward(self, x)
        return pooled - attn, attn  # the MLP branch alone

    monkeypatch.setattr(heads.AttentionPool, "forward", no_residual)


def probe_unscaled(monkeypatch):
    init = heads.AttentionPool.__init__

    def unscaled(self, *args):
        init(self, *args)
        self.scale = 1.0  # logits q.k without 1 / sqrt(head_dim)

    monkeypatch.setattr(heads.AttentionPool, "__init__", unscaled)


@pytest.mark.slow
@pytest.mark.parametrize("inject, first", [(rotate_halves, "blocks.0.rope"), (map_without_residual, "pool"),
                                           (probe_unscaled, "pool.attn")],
                         ids=["rope-halves", "map-no-residual", "probe-scaling"])
def test_injected_port_mistake_fails_at_its_row(tmp_path, monkeypatch, inject, first):
    inject(monkeypatch)
    code, data = report(tmp_path)
    assert code == 1 and data["verdict"] == "fail"
    assert (data["first_failure"]["section"], data["first_failure"]["name"]) == ("forward", first)
