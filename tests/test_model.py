"""The Flax model: Google param layout, shapes, options, determinism, bad input."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_writers import google_tree
from conftest import apply, assert_same_gradients, random_images, rel_l2

import vit_jax
from vit_jax import VisionTransformer, get_config
from vit_jax.config import REMAT_POLICIES

TINY = get_config("ViT-testing", head_zero_init=False)


def test_google_layout_tree_is_accepted_unchanged():
    tree = google_tree(TINY)
    logits = apply(TINY, tree, random_images(TINY), train=False)
    assert logits.shape == (2, TINY.num_classes)
    init_shapes = jax.tree.map(lambda x: x.shape, vit_jax.init_params(TINY))
    assert jax.tree.map(np.shape, tree) == init_shapes


def test_init_matches_google_paths_for_b16():
    flat = {"/".join(k.key for k in path): leaf.shape for path,
            leaf in jax.tree_util.tree_leaves_with_path(vit_jax.param_shapes(get_config("ViT-B_16")))}
    expected = {
        "embedding/kernel": (16, 16, 3, 768),
        "cls": (1, 1, 768),
        "Transformer/posembed_input/pos_embedding": (1, 197, 768),
        "Transformer/encoderblock_11/MultiHeadDotProductAttention_0/query/kernel": (768, 12, 64),
        "Transformer/encoderblock_11/MultiHeadDotProductAttention_0/query/bias": (12, 64),
        "Transformer/encoderblock_11/MultiHeadDotProductAttention_0/out/kernel": (12, 64, 768),
        "Transformer/encoderblock_11/MlpBlock_0/Dense_0/kernel": (768, 3072),
        "Transformer/encoderblock_11/LayerNorm_1/scale": (768,),
        "Transformer/encoder_norm/bias": (768,),
        "head/kernel": (768, 1000),
    }
    for path, shape in expected.items():
        assert flat[path] == shape, path
    assert len(flat) == 4 + 2 + 16 * 12 + 2  # embedding, cls, posemb, 16 leaves a block, norm; head
    assert not any("pre_logits" in k for k in flat)


@pytest.mark.parametrize(
    "overrides,out_shape",
    [
        ({"classifier": "token"}, (2, 10)),
        ({"classifier": "gap"}, (2, 10)),
        ({"classifier": "unpooled"}, (2, 16, 10)),
        ({"classifier": "token_unpooled"}, (2, 17, 10)),
        ({"classifier": "token", "num_classes": 0}, (2, 32)),
        ({"classifier": "gap", "num_classes": 0, "representation_size": 24}, (2, 24)),
        ({"classifier": "unpooled", "num_classes": 0}, (2, 16, 32)),
    ],
)
def test_output_shapes_per_classifier(overrides, out_shape):
    config = TINY.replace(**overrides)
    params = vit_jax.init_params(config)
    assert apply(config, params, random_images(config)).shape == out_shape
    has_cls = config.classifier in ("token", "token_unpooled")
    assert ("cls" in params) == has_cls
    assert ("head" in params) == bool(config.num_classes)


def test_intermediates_and_attention_have_canonical_names():
    params = vit_jax.init_params(TINY)
    plain = apply(TINY, params, random_images(TINY))
    logits, inter = apply(TINY, params, random_images(TINY), intermediates=True, return_attention=True)
    assert list(inter) == TINY.layer_names(attention=True) or set(inter) == set(TINY.layer_names(attention=True))
    np.testing.assert_allclose(logits, plain, rtol=1e-6, atol=1e-6)
    probs = inter["blocks.0.attn_probs"]
    assert probs.shape == (2, TINY.num_heads, TINY.seq_len, TINY.seq_len)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(inter["logits"], logits)
    # the probabilities are computed (and sown) only on request
    _, without = apply(TINY, params, random_images(TINY), intermediates=True)
    assert set(without) == set(TINY.layer_names())


def test_dot_product_attention_and_explicit_core_agree():
    config = TINY.replace(head_zero_init=False)
    params = vit_jax.init_params(config)
    images = random_images(config)
    library = apply(config.replace(attention_impl="xla"), params, images)  # jax.nn.dot_product_attention
    explicit = apply(config.replace(attention_impl="explicit"), params, images)
    assert rel_l2(library, explicit) < 1e-6
    np.testing.assert_array_equal(apply(config, params, images), explicit)  # 'auto' off GPU: the explicit form


def test_deterministic_without_dropout_and_random_with_it():
    config = TINY.replace(dropout_rate=0.1, attention_dropout_rate=0.1, stochastic_depth_rate=0.2)
    params = vit_jax.init_params(config)
    images = random_images(config)
    eval_a, eval_b = apply(config, params, images), apply(config, params, images)
    np.testing.assert_array_equal(eval_a, eval_b)
    def train(seed):
        return apply(config, params, images, train=True, rngs={"dropout": jax.random.key(seed)})
    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))
    assert not np.allclose(train(1), eval_a)
    # with every rate at zero, train mode is the eval function
    plain = TINY
    p = vit_jax.init_params(plain)
    np.testing.assert_allclose(
        apply(plain, p, images, train=True, rngs={"dropout": jax.random.key(0)}), apply(plain, p, images), rtol=1e-6
    )


def test_stochastic_depth_drops_whole_branches():
    config = TINY.replace(num_layers=1, stochastic_depth_rate=0.5)
    params = vit_jax.init_params(config)
    images = random_images(config, batch=64)
    _, inter = apply(config, params, images, train=True, rngs={"dropout": jax.random.key(3)}, intermediates=True)
    mlp = np.asarray(inter["blocks.0.mlp"])
    dropped = np.all(mlp == 0, axis=(1, 2))
    assert 10 < dropped.sum() < 54  # ~half the examples lose the branch
    _, eval_inter = apply(config, params, images, intermediates=True)
    kept = ~dropped
    # surviving branches are rescaled by 1 / keep_prob
    ratio = np.abs(mlp[kept]).sum() / np.abs(np.asarray(eval_inter["blocks.0.mlp"])[kept]).sum()
    assert 1.5 < ratio < 2.5


@pytest.mark.parametrize("remat", [False, True])
def test_scan_matches_unrolled_and_converts_losslessly(remat):
    config = TINY.replace(num_layers=3)
    scanned_config = config.replace(scan=True, remat=remat)
    params = vit_jax.init_params(config, 1)
    stacked = vit_jax.stack_block_params(params, config.num_layers)
    assert stacked["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (3, 32, 64)
    assert jax.tree.map(np.shape, stacked) == jax.tree.map(np.shape, vit_jax.init_params(scanned_config))
    images = random_images(config)
    ref, ref_inter = apply(config, params, images, intermediates=True, return_attention=True)
    out, inter = apply(scanned_config, stacked, images, intermediates=True, return_attention=True)
    assert set(inter) == set(ref_inter)
    for name in ref_inter:
        assert rel_l2(inter[name], ref_inter[name]) < 1e-6, name
    back = vit_jax.unstack_block_params(stacked)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), back, params))


def test_remat_gives_the_same_gradients():
    params = vit_jax.init_params(TINY, 2)
    images = random_images(TINY)

    def loss(p, config):
        return jnp.mean(VisionTransformer(config).apply({"params": p}, images) ** 2)

    g = jax.jit(jax.grad(loss), static_argnums=1)(params, TINY)
    g_remat = jax.jit(jax.grad(loss), static_argnums=1)(params, TINY.replace(remat=True))
    assert_same_gradients(g_remat, g)


@pytest.mark.parametrize("policy", REMAT_POLICIES)
def test_remat_policies_give_the_same_gradients(policy):
    """Every remat policy, scanned, computes the same gradients as keeping everything."""
    config = TINY.replace(scan=True, num_layers=3)
    params = vit_jax.init_params(config, 3)
    images = random_images(config)

    def loss(p, config):
        return jnp.mean(VisionTransformer(config).apply({"params": p}, images) ** 2)

    step = jax.jit(jax.grad(loss), static_argnums=1)
    g, g_remat = step(params, config), step(params, config.replace(remat=True, remat_policy=policy))
    # One vector: the key bias's gradient is zero in exact arithmetic (softmax is
    # shift-invariant), so per tensor it would compare rounding noise.
    def flat(tree):
        return np.concatenate([np.ravel(a) for a in jax.tree.leaves(tree)])
    assert rel_l2(flat(g_remat), flat(g)) < 1e-6


def test_bf16_compute_with_float32_params():
    config = TINY.replace(dtype="bfloat16")
    params = vit_jax.init_params(config)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    images = random_images(config)
    logits, inter = apply(config, params, images, intermediates=True)
    assert logits.dtype == jnp.bfloat16 and inter["blocks.0"].dtype == jnp.bfloat16
    ref = apply(TINY, params, images)
    assert rel_l2(logits.astype(jnp.float32), ref) < 3e-2
    model = VisionTransformer(config)
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply({"params": p}, images).astype(jnp.float32) ** 2)))(params)
    assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_bf16_params():
    config = TINY.replace(dtype="bfloat16", param_dtype="bfloat16")
    params = vit_jax.init_params(config)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(params))
    assert np.isfinite(np.asarray(apply(config, params, random_images(config)), np.float32)).all()


def test_sincos_posemb_has_no_params_and_matches_big_vision_formula():
    config = TINY.replace(posemb="sincos2d")
    params = vit_jax.init_params(config)
    assert "posembed_input" not in params["Transformer"]
    table = vit_jax.sincos_2d((2, 3), 8)
    assert table.shape == (1, 6, 8)
    # cell (row 1, col 2): x=2, y=1; omega = 1 / 10000 ** [0, 1]
    omega = 1.0 / 10_000.0 ** np.array([0.0, 1.0])
    expected = np.concatenate([np.sin(2 * omega), np.cos(2 * omega), np.sin(1 * omega), np.cos(1 * omega)])
    np.testing.assert_allclose(table[0, 5], expected, rtol=1e-12)


def test_bad_images_give_clear_errors():
    params = vit_jax.init_params(TINY)
    with pytest.raises(ValueError, match="image size 32x32 does not match config image size 16x16"):
        apply(TINY, params, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="images have 16 channels, config expects 3"):
        apply(TINY, params, np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="must be NHWC"):
        apply(TINY, params, np.zeros((16, 16, 3), np.float32))


def test_summary_lists_layers_and_totals():
    text = vit_jax.summary(get_config("ViT-B_16"))
    assert "blocks.11.mlp" in text and "(1, 197, 768)" in text
    assert "86,567,656" in text
