"""`VisionTransformer.forward_intermediates` against timm's own `forward_intermediates`, on small random models of
the families whose prefix tokens, final norm and rotary embedding make it differ from a plain slice of the tokens:
DINOv2 with registers, EVA-02 and SigLIP (timm's code, loaded through the project's reader)."""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import nchw, rel_l2
from torchvision_stub import import_timm

import vit_jax
from vit_jax.model import block_indices

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")

TINY = dict(img_size=28, patch_size=7, embed_dim=32, depth=3, num_heads=2, num_classes=0)
FAMILIES = {  # id -> (architecture, model_args beyond TINY)
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", dict(mlp_ratio=2.0)),
    "eva02": ("eva02_tiny_patch14_224", dict(ref_feat_shape=[4, 4])),
    "siglip": ("vit_base_patch16_siglip_224", dict(mlp_ratio=1.25)),
    "fc-norm": ("vit_base_patch16_224", dict(global_pool="avg", fc_norm=True, mlp_ratio=2.0)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(timm's model, our config and params read from its hub directory, NHWC images)."""
    arch, extra = FAMILIES[request.param]
    args = {**TINY, **extra}
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **args)
    with torch.no_grad():  # away from the init: zero biases, unit norms and 1e-5 LayerScales hide mistakes
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape))
    path = tmp_path_factory.mktemp(request.param)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 0, "model_args": args}))
    config, params = vit_jax.load_pretrained(path)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    return model.eval(), config, params, images


@functools.lru_cache(maxsize=None)
def _ours(config, **kwargs):
    model = vit_jax.VisionTransformer(config)
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method="forward_intermediates", **kwargs))


@pytest.mark.parametrize("kwargs", [
    dict(indices=2, norm=True),
    dict(indices=(-1, 0), norm=False),
    dict(indices=None, norm=True, intermediates_only=True),
], ids=["last-2-normed", "list", "all-only"])
def test_equals_timms_forward_intermediates(family, kwargs):
    model, config, params, images = family
    with torch.no_grad():
        want = model.forward_intermediates(nchw(images), output_fmt="NCHW", **kwargs)
    got = _ours(config, output_fmt="NCHW", **kwargs)(params, images)
    if not kwargs.get("intermediates_only"):
        (want_final, want), (got_final, got) = want, got
        assert got_final.shape == tuple(want_final.shape)
        assert rel_l2(got_final, want_final.numpy()) < 1e-5
    assert len(got) == len(want) == len(block_indices(config.num_layers, kwargs["indices"]))
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape) and rel_l2(g, w.numpy()) < 1e-5


def test_layouts_and_prefix_tokens(family):
    model, config, params, images = family
    with torch.no_grad():
        want = model.forward_intermediates(nchw(images), indices=1, output_fmt="NLC", return_prefix_tokens=True,
                                           intermediates_only=True)
    nhwc = _ours(config, indices=1, intermediates_only=True)(params, images)[0]
    nlc, prefix = _ours(config, indices=1, output_fmt="NLC", return_prefix_tokens=True,
                        intermediates_only=True)(params, images)[0]
    want_nlc = want[0][0] if isinstance(want[0], tuple) else want[0]
    assert nhwc.shape == (2, *config.grid_size, config.hidden_size)
    np.testing.assert_array_equal(np.reshape(nhwc, nlc.shape), nlc)
    assert rel_l2(nlc, want_nlc.numpy()) < 1e-5
    assert prefix.shape == (2, config.num_prefix_tokens, config.hidden_size)
    if isinstance(want[0], tuple) and config.num_prefix_tokens:
        assert rel_l2(prefix, want[0][1].numpy()) < 1e-5


@pytest.mark.parametrize("indices, message", [(0, "last 0 blocks"), (4, "the model has 3"), ([3], "outside")])
def test_bad_indices_are_named(indices, message):
    with pytest.raises(ValueError, match=message):
        block_indices(3, indices)
