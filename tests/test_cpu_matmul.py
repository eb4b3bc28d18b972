"""token_dot_general (vit_jax/matmul.py) and the one-matmul q/k/v projection (model.ProjectionParams)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vit_jax.cpu.kernel_set import ProjectionParams
from vit_jax.cpu.matmul import gelu_projection, shared_input_projections, token_dot_general

# (lhs shape, rhs shape, dimension numbers): the projection forms the model uses.
PROJECTIONS = {
    "dense": ((3, 7, 8), (8, 5), (((2,), (0,)), ((), ()))),
    "to_heads": ((3, 7, 8), (8, 2, 4), (((2,), (0,)), ((), ()))),
    "from_heads": ((3, 7, 2, 4), (2, 4, 6), (((2, 3), (0, 1)), ((), ()))),
    "2d": ((5, 8), (8, 3), (((1,), (0,)), ((), ()))),
}


def _random(shape, seed, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


@pytest.mark.parametrize("name", list(PROJECTIONS))
def test_values_and_gradients_equal_lax_dot_general_in_float64(name):
    lhs_shape, rhs_shape, dims = PROJECTIONS[name]
    with jax.enable_x64():
        lhs, rhs = _random(lhs_shape, 0), _random(rhs_shape, 1)
        weights = _random(lax.dot_general(lhs, rhs, dims).shape, 2)

        def loss(f):
            return lambda a, b: jnp.sum(jnp.sin(f(a, b, dims)) * weights)

        ours = jax.value_and_grad(loss(token_dot_general), argnums=(0, 1))(lhs, rhs)
        reference = jax.value_and_grad(loss(lax.dot_general), argnums=(0, 1))(lhs, rhs)
        np.testing.assert_allclose(ours[0], reference[0], rtol=1e-13)
        for got, want in zip(ours[1], reference[1]):
            assert got.shape == want.shape and got.dtype == jnp.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_bfloat16_keeps_the_operand_dtypes_in_the_gradients():
    lhs_shape, rhs_shape, dims = PROJECTIONS["to_heads"]
    lhs, rhs = _random(lhs_shape, 0, jnp.bfloat16), _random(rhs_shape, 1, jnp.bfloat16)
    grads = jax.grad(lambda a, b: jnp.sum(token_dot_general(a, b, dims).astype(jnp.float32)), argnums=(0, 1))(lhs, rhs)
    reference = jax.grad(lambda a, b: jnp.sum(lax.dot_general(a, b, dims).astype(jnp.float32)),
                         argnums=(0, 1))(lhs, rhs)
    for got, want in zip(grads, reference):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)


def test_other_forms_fall_through_to_lax_dot_general():
    lhs, rhs = _random((2, 5, 4), 0, jnp.float32), _random((2, 4, 3), 1, jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(token_dot_general(lhs, rhs, batched), lax.dot_general(lhs, rhs, batched))
    leading = (((0,), (0,)), ((), ()))  # contracts a leading lhs axis
    a, b = _random((4, 3), 0, jnp.float32), _random((4, 2), 1, jnp.float32)
    np.testing.assert_array_equal(token_dot_general(a, b, leading), lax.dot_general(a, b, leading))


def test_flax_dense_with_it_matches_flax_dense_in_a_jitted_gradient():
    x = _random((2, 9, 16), 0, jnp.float32)
    plain, ours = nn.DenseGeneral((4, 8)), nn.DenseGeneral((4, 8), dot_general=token_dot_general)
    params = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(ours.init(jax.random.key(0), x))

    def grads(module):
        return jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))(params)

    for got, want in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(plain))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_bias", [True, False])
def test_projection_params_are_what_dense_general_would_create(use_bias):
    x = jnp.zeros((1, 3, 12))
    dense = nn.DenseGeneral((2, 6), use_bias=use_bias, kernel_init=nn.initializers.xavier_uniform())
    want = dense.init(jax.random.key(7), x)["params"]
    got = ProjectionParams((2, 6), use_bias=use_bias,
                           kernel_init=nn.initializers.xavier_uniform()).init(jax.random.key(7), 12)["params"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    kernel, bias = ProjectionParams((2, 6), use_bias=use_bias).apply({"params": got}, 12)
    np.testing.assert_array_equal(kernel, want["kernel"])
    assert (bias is None) == (not use_bias)


@pytest.mark.parametrize("feature_shapes", [[(4,), (4,), (6,)], [(2, 3), (2, 3), (2, 3)]])
def test_shared_input_projections_equal_separate_products_and_their_gradients_in_float64(feature_shapes):
    with jax.enable_x64():
        x = _random((3, 5, 8), 0)
        kernels = [_random((8, *f), i + 1) for i, f in enumerate(feature_shapes)]
        weights = [_random((3, 5, *f), i + 10) for i, f in enumerate(feature_shapes)]

        def loss(project):
            return lambda x, ks: sum(jnp.sum(jnp.sin(y) * w) for y, w in zip(project(x, ks), weights))

        def separate(x, ks):
            return [jnp.tensordot(x, k, axes=1) for k in ks]

        ours = jax.value_and_grad(loss(shared_input_projections), argnums=(0, 1))(x, kernels)
        reference = jax.value_and_grad(loss(separate), argnums=(0, 1))(x, kernels)
        np.testing.assert_allclose(ours[0], reference[0], rtol=1e-13)
        np.testing.assert_allclose(ours[1][0], reference[1][0], rtol=1e-12, atol=1e-13)
        for got, want in zip(ours[1][1], reference[1][1]):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
        for y, k in zip(shared_input_projections(x, kernels), kernels):
            assert y.shape == (3, 5, *k.shape[1:])


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_projection_equals_gelu_then_projection_forward_and_backward(approximate):
    def loss(project, weights):
        return lambda pre, kernel: jnp.sum(jnp.sin(project(pre, kernel)) * weights)

    def plain(pre, kernel):
        return token_dot_general(jax.nn.gelu(pre, approximate=approximate), kernel, (((2,), (0,)), ((), ())))

    def ours(pre, kernel):
        return gelu_projection(pre, kernel, approximate)

    with jax.enable_x64():
        pre, kernel, weights = _random((3, 7, 16), 0) * 2, _random((16, 5), 1), _random((3, 7, 5), 2)
        got = jax.value_and_grad(loss(ours, weights), argnums=(0, 1))(pre, kernel)
        want = jax.value_and_grad(loss(plain, weights), argnums=(0, 1))(pre, kernel)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
        for a, b in zip(got[1], want[1]):
            assert a.shape == b.shape and a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # float32 under jit, where XLA fuses the recomputation
    pre, kernel, weights = (np.asarray(t, np.float32) for t in (pre, kernel, weights))
    got = jax.jit(jax.value_and_grad(loss(ours, weights), argnums=(0, 1)))(pre, kernel)
    want = jax.jit(jax.value_and_grad(loss(plain, weights), argnums=(0, 1)))(pre, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
