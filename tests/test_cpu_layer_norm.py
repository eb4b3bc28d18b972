"""vit_jax.cpu.layer_norm: the hand-written backward equals autodiff of the formula, and the module matches Flax's."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from conftest import rel_l2

from vit_jax.cpu.layer_norm import LayerNorm, layer_norm


def _reference(x, scale, bias, eps):
    """The formula, differentiated by JAX (two-pass variance)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


def _inputs(rng, dtype, shape=(3, 7, 48)):
    x = rng.normal(0.3, 2.0, shape)
    scale = 1 + 0.1 * rng.normal(size=shape[-1])
    bias = 0.1 * rng.normal(size=shape[-1])
    cot = rng.normal(size=shape)
    return [jnp.asarray(a, dtype) for a in (x, scale, bias, cot)]


def _value_and_grads(fn, x, scale, bias, cot):
    out, vjp = jax.vjp(fn, x, scale, bias)
    return (out, *vjp(cot))


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-12])
def test_forward_and_backward_equal_autodiff_in_float64(rng, eps):
    with jax.enable_x64(True):
        x, scale, bias, cot = _inputs(rng, jnp.float64)
        ours = _value_and_grads(lambda a, s, b: layer_norm(a, s, b, eps, jnp.dtype("float64")), x, scale, bias, cot)
        ref = _value_and_grads(lambda a, s, b: _reference(a, s, b, eps), x, scale, bias, cot)
        for name, a, b in zip(("out", "dx", "dscale", "dbias"), ours, ref):
            assert a.dtype == jnp.float64, name
            assert rel_l2(a, b) < 1e-12, (name, rel_l2(a, b))


def test_float32_agrees_with_float64_and_flax(rng):
    x, scale, bias, cot = _inputs(rng, jnp.float32)
    ours = _value_and_grads(lambda a, s, b: layer_norm(a, s, b, 1e-6, jnp.dtype("float32")), x, scale, bias, cot)
    with jax.enable_x64(True):
        exact = _value_and_grads(lambda a, s, b: _reference(a, s, b, 1e-6),
                                 *(jnp.asarray(t, jnp.float64) for t in (x, scale, bias, cot)))
    for name, a, b in zip(("out", "dx", "dscale", "dbias"), ours, exact):
        assert rel_l2(a, b) < 1e-6, (name, rel_l2(a, b))

    module = LayerNorm(epsilon=1e-6)
    flax_module = nn.LayerNorm(epsilon=1e-6)
    params = {"scale": scale, "bias": bias}
    assert jax.tree.structure(module.init(jax.random.key(0), x)["params"]) == jax.tree.structure(
        flax_module.init(jax.random.key(0), x)["params"])
    ours_out, ours_vjp = jax.vjp(lambda p, a: module.apply({"params": p}, a), params, x)
    flax_out, flax_vjp = jax.vjp(lambda p, a: flax_module.apply({"params": p}, a), params, x)
    assert rel_l2(ours_out, flax_out) < 1e-6
    for a, b in zip(jax.tree.leaves(ours_vjp(cot)), jax.tree.leaves(flax_vjp(cot))):
        assert rel_l2(a, b) < 1e-5


def test_bfloat16_compute_keeps_float32_statistics_and_param_gradients(rng):
    x, scale, bias, cot = _inputs(rng, jnp.float32)
    module = LayerNorm(epsilon=1e-6, dtype=jnp.bfloat16)
    params = {"scale": scale, "bias": bias}
    out, vjp = jax.vjp(lambda p, a: module.apply({"params": p}, a), params, x.astype(jnp.bfloat16))
    d_params, d_x = vjp(cot.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and d_x.dtype == jnp.bfloat16
    assert d_params["scale"].dtype == jnp.float32 and d_params["bias"].dtype == jnp.float32
    exact = _value_and_grads(lambda a, s, b: _reference(a, s, b, 1e-6), x.astype(jnp.bfloat16).astype(jnp.float32),
                             scale, bias, cot)
    assert rel_l2(out, exact[0]) < 1e-2
    assert rel_l2(d_x, exact[1]) < 2e-2
