"""Position-embedding resizing: Google's align_corners bilinear, class slot kept apart."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import random_images

import vit_jax
from vit_jax import get_config, resize_pos_embed


def test_bilinear_equals_align_corners_interpolation():
    rng = np.random.default_rng(0)
    posemb = rng.standard_normal((1, 1 + 7 * 7, 12)).astype(np.float32)
    resized = resize_pos_embed(posemb, (12, 12), num_prefix_tokens=1)
    assert resized.shape == (1, 1 + 144, 12) and resized.dtype == np.float32
    np.testing.assert_array_equal(resized[:, :1], posemb[:, :1])  # class slot untouched
    grid = torch.from_numpy(posemb[0, 1:].reshape(7, 7, 12)).permute(2, 0, 1)[None].double()
    expected = F.interpolate(grid, size=(12, 12), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)
    np.testing.assert_allclose(resized[0, 1:].reshape(12, 12, 12), expected.numpy(), rtol=1e-6, atol=1e-6)
    # corners are kept exactly (align_corners=True); half-pixel resizing would move them
    np.testing.assert_allclose(resized[0, 1], posemb[0, 1], rtol=1e-6)
    np.testing.assert_allclose(resized[0, -1], posemb[0, -1], rtol=1e-6)


def test_bicubic_option_and_identity():
    posemb = np.random.default_rng(1).standard_normal((1, 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(resize_pos_embed(posemb, (4, 4), num_prefix_tokens=0), posemb)
    cubic = resize_pos_embed(posemb, (6, 6), num_prefix_tokens=0, method="bicubic")
    linear = resize_pos_embed(posemb, (6, 6), num_prefix_tokens=0)
    assert cubic.shape == linear.shape == (1, 36, 8) and not np.allclose(cubic, linear)
    np.testing.assert_allclose(cubic[0, 0], posemb[0, 0], rtol=1e-5)
    with pytest.raises(ValueError, match="resize method 'nearest' is not one of"):
        resize_pos_embed(posemb, (6, 6), num_prefix_tokens=0, method="nearest")
    with pytest.raises(ValueError, match="cannot infer the grid of 15"):
        resize_pos_embed(posemb[:, 1:], (6, 6), num_prefix_tokens=0)


def test_resize_params_runs_at_the_new_resolution():
    config = get_config("ViT-testing")
    params = vit_jax.init_params(config)
    bigger = config.replace(image_size=24)
    resized = vit_jax.resize_params(params, config, 24)
    assert resized["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 36, 32)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)  # input untouched
    out = vit_jax.VisionTransformer(bigger).apply({"params": resized}, random_images(bigger))
    assert out.shape == (2, 10)
