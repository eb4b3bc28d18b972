"""The NNX form (vit_jax.nnx_model, Flax's ToNNX bridge): the Linen param tree, the Linen outputs and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_same_gradients, random_images, rel_l2
from flax import nnx

import vit_jax
from vit_jax.formats.mapping import flatten

CONFIGS = {
    "token": vit_jax.get_config("Ti/16").replace(image_size=32, patch_size=8, num_layers=2, hidden_size=32,
                                                 num_heads=2, mlp_dim=64, num_classes=5, head_zero_init=False),
    "registers-gap-layerscale": vit_jax.get_config("Ti/16").replace(
        image_size=32, patch_size=8, num_layers=2, hidden_size=32, num_heads=2, mlp_dim=64, num_classes=3,
        head_zero_init=False, classifier="gap", fc_norm=True, num_register_tokens=2, layer_scale=True,
        layer_scale_init=0.5),
}


def _loss(logits):
    return jnp.sum(jnp.sin(logits) * jnp.arange(logits.shape[-1]))


@pytest.mark.slow  # ~15 s a config on 2 cores
@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_gradients_and_tree_equal_linens(name):
    config = CONFIGS[name]
    params = vit_jax.init_params(config, 3)
    images = random_images(config)
    linen = vit_jax.VisionTransformer(config)
    model = vit_jax.nnx_model(config, params)

    held = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert flatten(held).keys() == flatten(params).keys()
    for key, value in flatten(params).items():
        np.testing.assert_array_equal(flatten(held)[key], value, err_msg=key)

    want = linen.apply({"params": params}, images)
    got = nnx.jit(lambda m, x: m(x))(model, images)
    assert rel_l2(got, want) < 1e-6 and float(jnp.abs(want).max()) > 0.1

    want_grads = jax.grad(lambda p: _loss(linen.apply({"params": p}, images)))(params)
    got_grads = nnx.grad(lambda m: _loss(m(images)))(model)
    assert_same_gradients(nnx.to_pure_dict(got_grads), want_grads, rel=1e-6)

    want_final, want_features = linen.apply({"params": params}, images, indices=1, method="forward_intermediates")
    got_final, got_features = model(images, indices=1, method="forward_intermediates")
    assert rel_l2(got_final, want_final) < 1e-6 and rel_l2(got_features[0], want_features[0]) < 1e-6


def test_fresh_model_trains_with_its_own_dropout_stream():
    config = CONFIGS["token"].replace(dropout_rate=0.5)
    model = vit_jax.nnx_model(config, seed=1)
    images = random_images(config)
    first, second = model(images, train=True), model(images, train=True)
    assert not np.allclose(first, second)  # each call draws new dropout masks
    np.testing.assert_array_equal(model(images), model(images))  # eval is deterministic
    optimizer = nnx.Optimizer(model, __import__("optax").sgd(0.1), wrt=nnx.Param)
    before = _loss(model(images))
    optimizer.update(model, nnx.grad(lambda m: _loss(m(images)))(model))
    assert _loss(model(images)) < before


def test_load_pretrained_returns_the_nnx_model(tmp_path):
    config = CONFIGS["token"]
    params = vit_jax.init_params(config, 4)
    np.savez(tmp_path / "vit.npz", **{k: np.asarray(v) for k, v in flatten(params).items()})  # Google's layout
    loaded_config, model = vit_jax.load_pretrained(tmp_path / "vit.npz", config=config, nnx=True)
    images = random_images(config)
    want = vit_jax.VisionTransformer(loaded_config).apply({"params": params}, images)
    assert isinstance(model, nnx.Module) and rel_l2(model(images), want) < 1e-6


def test_params_of_another_model_are_named():
    config = CONFIGS["token"]
    params = vit_jax.init_params(config.replace(num_classes=7))
    with pytest.raises(ValueError, match=r"head/bias. is \(7,\), expected \(5,\)"):
        vit_jax.nnx_model(config, params)
