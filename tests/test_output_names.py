"""The transformers columns of docs/model.md's output-name table, on small random models: where
`last_hidden_state` and `pooler_output` are among the model's canonical intermediates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import nchw, rel_l2

import vit_jax

transformers = pytest.importorskip("transformers")
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=16)
CASES = {  # class -> (config, the intermediate last_hidden_state is, the one pooler_output is)
    "CLIPVisionModel": (lambda: transformers.CLIPVisionConfig(**_SMALL, intermediate_size=64), "blocks.1",
                        "pre_logits"),
    "SiglipVisionModel": (lambda: transformers.SiglipVisionConfig(**_SMALL, intermediate_size=64), "norm", "pool"),
    "Dinov2Model": (lambda: transformers.Dinov2Config(**_SMALL, mlp_ratio=2), "norm", "pre_logits"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_outputs_are_the_tabled_intermediates(name, tmp_path):
    config_fn, last_hidden, pooler = CASES[name]
    torch.manual_seed(0)
    model = getattr(transformers, name)(config_fn()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    model.save_pretrained(tmp_path)
    config, params = vit_jax.load_pretrained(tmp_path)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    _, inter = vit_jax.apply_with_intermediates(vit_jax.VisionTransformer(config), {"params": params}, images)
    with torch.no_grad():
        want = model(pixel_values=nchw(images))
    assert rel_l2(inter[last_hidden], want.last_hidden_state.numpy()) < 1e-5
    assert rel_l2(inter[pooler], want.pooler_output.numpy()) < 1e-5
