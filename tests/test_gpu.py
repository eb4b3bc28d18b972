"""Checks that need a GPU (marker `gpu`; `python -m benchmarks.gpu_check` runs them).

Skipped where JAX has no GPU backend: CPU CI proves the accelerator programs
lower (tests/test_export.py); these prove they run and compute the function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_images, rel_l2

import vit_jax
from vit_jax import VisionTransformer
from vit_jax.attention import explicit_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU backend for JAX"),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("impl", ["cudnn", "auto", "xla"])
def test_library_attention_matches_the_explicit_form(impl, dtype):
    rng = np.random.default_rng(0)
    q, k, v, d_out = (jnp.asarray(rng.standard_normal((4, 197, 12, 64)), dtype) for _ in range(4))

    def vjp(fn):
        out, pullback = jax.vjp(fn, q, k, v)
        return (out, *pullback(d_out))

    want = jax.jit(lambda: vjp(lambda q, k, v: explicit_attention(q, k, v)[0]))()
    implementation = None if impl == "auto" else impl
    got = jax.jit(lambda: vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation=implementation)))()
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert rel_l2(a, b) < 2e-2, name  # two bf16/f16 roundings of the same function


def test_full_precision_float32_forward_matches_float64_on_the_cpu():
    config = vit_jax.get_config("ViT-Ti_16", num_layers=4, num_classes=10, head_zero_init=False)
    params = vit_jax.init_params(config)
    images = random_images(config)
    with jax.default_matmul_precision("highest"):
        gpu = jax.jit(lambda p, x: VisionTransformer(config).apply({"params": p}, x))(params, images)
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        c64 = config.replace(dtype="float64", param_dtype="float64")
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        ref = VisionTransformer(c64).apply({"params": p64}, jnp.asarray(images, jnp.float64))
    assert rel_l2(gpu, ref) < 1e-5


def test_bfloat16_training_learns_a_fixed_batch():
    config = vit_jax.get_config("ViT-Ti_16", num_layers=4, num_classes=10, dtype="bfloat16", head_zero_init=False)
    model = VisionTransformer(config)
    images = jnp.asarray(random_images(config, batch=32))
    labels = jnp.arange(32) % 10
    tx = optax.adamw(1e-3)
    params = vit_jax.init_params(config)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        def loss(p):
            logits = model.apply({"params": p}, images, train=True).astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    losses = []
    for _ in range(30):
        params, opt, value = step(params, opt)
        losses.append(float(value))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], losses
