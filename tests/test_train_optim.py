"""Optimiser pieces: decay mask, schedule, SGD/AdamW updates, mixing, bf16 compute with float32 masters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax import VisionTransformer, get_config, init_params
from vit_jax.formats.mapping import flatten
from vit_jax.training import optim
from vit_jax.training.state import create_train_state
from vit_jax.training.steps import StepOptions, train_step

CONFIG = get_config("ViT-testing")


def test_weight_decay_only_on_kernels():
    mask = flatten(optim.path_mask(init_params(CONFIG), optim.DECAY_RULE))
    decayed = sorted(k for k, v in mask.items() if v)
    assert decayed and all(k.endswith("/kernel") for k in decayed)
    for name in ("cls", "Transformer/posembed_input/pos_embedding", "Transformer/encoder_norm/scale",
                 "Transformer/encoderblock_0/LayerNorm_0/bias", "head/bias", "embedding/bias"):
        assert mask[name] is False, name
    assert mask["embedding/kernel"] and mask["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"]


def test_warmup_then_cosine_and_linear_decay():
    cosine = optim.learning_rate_schedule(1.0, total_steps=110, warmup_steps=10, decay="cosine")
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0) and float(cosine(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
    linear = optim.learning_rate_schedule(2.0, total_steps=20, warmup_steps=0, decay="linear", end_factor=0.5)
    assert [float(linear(s)) for s in (0, 10, 20)] == pytest.approx([2.0, 1.5, 1.0])


# With zero gradients only the decoupled decay moves a parameter: -lr * wd * w on kernels, nothing elsewhere.
# LAMB then rescales the kernel's update to the kernel's own norm (trust ratio ||w|| / ||wd * w||).
@pytest.mark.parametrize("name, kernel_step", [("adamw", 0.5), ("sgd", 0.5), ("lion", 0.5), ("lamb", 1.0),
                                               ("adafactor", 0.5), ("muon", 0.5)])
def test_decay_leaves_unmasked_params_alone_when_gradients_are_zero(name, kernel_step):
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    tx = optim.make_optimizer(params, name=name, schedule=optim.learning_rate_schedule(0.1, 10, 0, "constant"),
                              weight_decay=0.5, grad_clip=1.0)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * kernel_step * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["dense"]["bias"], np.zeros(2))


def test_muon_orthogonalises_attention_kernels_as_their_input_by_output_matrix():
    """A (in, heads, head_dim) query kernel gets the update optax's muon gives the (in, heads*head_dim) matrix."""
    from optax.contrib import muon

    rng = np.random.default_rng(0)
    kernel, grad = (jnp.asarray(rng.normal(size=(8, 2, 4)), jnp.float32) for _ in range(2))
    params = {"query": {"kernel": kernel, "bias": jnp.zeros((2, 4))}}
    grads = {"query": {"kernel": grad, "bias": jnp.ones((2, 4))}}
    schedule = optim.learning_rate_schedule(0.1, 10, 0, "constant")
    tx = optim.make_optimizer(params, name="muon", schedule=schedule, weight_decay=0.0, grad_clip=0.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    reference = muon(schedule)
    flat = kernel.reshape(8, 8)
    expected, _ = reference.update(grad.reshape(8, 8), reference.init(flat), flat)
    np.testing.assert_allclose(updates["query"]["kernel"].reshape(8, 8), expected, rtol=1e-5, atol=1e-6)
    # The bias goes to muon's (Nesterov) AdamW part, undecayed.
    adam = optax.adamw(schedule, nesterov=True, weight_decay=0.0)
    bias = params["query"]["bias"]
    expected_bias, _ = adam.update(grads["query"]["bias"], adam.init(bias), bias)
    np.testing.assert_allclose(updates["query"]["bias"], expected_bias, rtol=1e-6)


@pytest.mark.parametrize("name, lr", [("lion", 1e-2), ("lamb", 1e-1), ("adafactor", 3e-2), ("muon", 3e-2)])
def test_each_optimizer_fits_a_softmax_regression(name, lr):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    labels = jnp.argmax(x @ jnp.asarray(rng.normal(size=(8, 4)), jnp.float32), axis=-1)  # separable
    params = {"head": {"kernel": jnp.zeros((8, 4)), "bias": jnp.zeros(4)}}
    tx = optim.make_optimizer(params, name=name, schedule=optim.learning_rate_schedule(lr, 50, 0, "constant"),
                              weight_decay=1e-4, grad_clip=1.0)

    def loss_fn(p):
        logits = x @ p["head"]["kernel"] + p["head"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for _ in range(50):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0], (name, losses[::10])


def test_mixup_and_cutmix_mix_images_and_targets_consistently():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(4, 8, 8, 1)), jnp.float32)
    targets = jax.nn.one_hot(jnp.arange(4), 4)
    for mixup, cutmix in ((0.4, 0.0), (0.0, 1.0)):
        mixed, mixed_targets = optim.mix_batch(jax.random.key(3), images, targets, mixup, cutmix)
        np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
        # Example 0 is mixed with example 3 only, in the proportion its target says.
        lam = float(mixed_targets[0, 0])
        assert 0.0 < lam < 1.0 and float(mixed_targets[0, 3]) == pytest.approx(1 - lam)
        if mixup:
            np.testing.assert_allclose(mixed[0], lam * images[0] + (1 - lam) * images[3], rtol=1e-5)
        else:
            from_partner = np.isclose(mixed[0], images[3]) & ~np.isclose(images[0], images[3])
            assert from_partner.mean() == pytest.approx(1 - lam)


def test_bfloat16_compute_keeps_float32_master_weights():
    config = CONFIG.replace(dtype="bfloat16")
    params = init_params(config)
    schedule = optim.learning_rate_schedule(1e-3, 10, 0, "constant")
    tx = optim.make_optimizer(params, name="adamw", schedule=schedule, weight_decay=0.0, grad_clip=1.0)
    step = jax.jit(functools.partial(train_step, apply_fn=VisionTransformer(config).apply, tx=tx,
                                     schedule=schedule, options=StepOptions(num_classes=10)))
    batch = {"image": jnp.zeros((4, 16, 16, 3)), "label": jnp.arange(4)}
    state, metrics = step(create_train_state(params, tx, 0), batch)
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
