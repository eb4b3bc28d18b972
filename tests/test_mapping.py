"""The Flax <-> torch mapping: exact round trips, same function, clear errors."""

import functools

import jax
import numpy as np
import pytest
import torch
from checkpoint_writers import google_tree
from conftest import nchw, random_images, rel_l2

import parity
import vit_jax
from parity import MappingError
from vit_jax import VisionTransformer, get_config
from vit_jax.model import apply_with_intermediates

TINY = get_config("ViT-testing", head_zero_init=False)

# Small configs that together cover every model option.
OPTION_CONFIGS = {
    "token/tanh/learn": TINY,
    "gap/exact/no-qkv-bias/eps1e-5/repr": TINY.replace(
        classifier="gap", gelu="exact", qkv_bias=False, layer_norm_eps=1e-5, representation_size=24, num_classes=7
    ),
    "unpooled/sincos": TINY.replace(classifier="unpooled", posemb="sincos2d"),
    "token_unpooled/features-only": TINY.replace(classifier="token_unpooled", num_classes=0),
    "scan+remat/3-layers/heads4": TINY.replace(scan=True, remat=True, num_layers=3, num_heads=4),
    "non-square/1-channel": TINY.replace(
        image_size=(16, 24), patch_size=(4, 8), num_channels=1, pixel_mean=(0.5,), pixel_std=(0.5,)
    ),
    "eps1e-12/head-bias/dropout-configured": TINY.replace(
        layer_norm_eps=1e-12, head_bias_init=-2.0, dropout_rate=0.1, attention_dropout_rate=0.1,
                                                          stochastic_depth_rate=0.1
    ),
}


@functools.lru_cache(maxsize=None)
def _flax_forward(config):
    model = VisionTransformer(config)
    return jax.jit(lambda p, x: apply_with_intermediates(model, {"params": p}, x, return_attention=True))


def layer_table(errors):
    return "\n".join(f"  {name:<22} rel {err:.2e}" for name, err in errors.items())


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_same_weights_same_function_at_every_layer(name, kernels):
    config = OPTION_CONFIGS[name].replace(kernels=kernels)
    params = vit_jax.init_params(config, 7)
    images = random_images(config, batch=3, seed=1)
    _, flax_inter = _flax_forward(config)(params, images)
    model = parity.torch_model_from_flax(params, config)
    with torch.no_grad():
        _, torch_inter = model(nchw(images), return_intermediates=True, return_attention=True)
    assert list(torch_inter) == config.layer_names(attention=True)
    errors = {k: rel_l2(flax_inter[k], torch_inter[k].numpy()) for k in config.layer_names(attention=True)}
    bad = {k: e for k, e in errors.items() if not e <= 1e-5}
    assert not bad, f"{name}: layers over 1e-5 relative L2 (first: {next(iter(bad))}):\n{layer_table(errors)}"


@pytest.mark.parametrize("kernels", ["reference", "cpu"])
@pytest.mark.parametrize("name",
                         ["token/tanh/learn", "gap/exact/no-qkv-bias/eps1e-5/repr", "scan+remat/3-layers/heads4"])
def test_same_gradients_as_the_twin(name, kernels):
    """Both kernel sets' gradients equal the twin's, parameter by parameter, through the mapping."""
    config = OPTION_CONFIGS[name].replace(kernels=kernels)
    params = vit_jax.init_params(config, 7)
    images = random_images(config, batch=3, seed=1)
    weights = np.random.default_rng(2).standard_normal((3, config.num_classes or config.hidden_size)).astype(np.float32)

    def loss(p):
        return jax.numpy.sum(jax.numpy.sin(VisionTransformer(config).apply({"params": p}, images)) * weights)

    flax_grads = jax.jit(jax.grad(loss))(params)
    model = parity.torch_model_from_flax(params, config)
    torch.sum(torch.sin(model(nchw(images))) * torch.from_numpy(weights)).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)
    torch_grads = parity.flax_params_from_torch(model, config)
    def flat(tree):
        return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])
    assert jax.tree.structure(torch_grads) == jax.tree.structure(flax_grads)
    assert rel_l2(flat(flax_grads), flat(torch_grads)) < 1e-5
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(flax_grads), jax.tree.leaves(torch_grads)):
        if "'key'" not in jax.tree_util.keystr(path):  # the key bias's exact gradient is 0: noise on both sides
            assert rel_l2(a, b) < 1e-4, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", list(OPTION_CONFIGS))
def test_round_trips_are_bit_exact(name):
    config = OPTION_CONFIGS[name]
    params = jax.tree.map(np.asarray, vit_jax.init_params(config, 3))
    state_dict = parity.flax_to_torch(params, config)
    back = parity.torch_to_flax(state_dict, config)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a,
               b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))
    again = parity.flax_to_torch(back, config)
    assert all(np.array_equal(state_dict[k], again[k]) for k in state_dict)
    # every parameter is covered by exactly one rule
    covered = [p for rule in parity.param_rules(config) for p in rule.flax]
    assert sorted(covered) == sorted(parity.flatten(vit_jax.unstack_block_params(params)))


def test_bfloat16_round_trip_is_bit_exact():
    config = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
    params = jax.tree.map(np.asarray, vit_jax.init_params(config, 3))
    model = parity.torch_model_from_flax(params, config)
    assert model.patch_embed.proj.weight.dtype == torch.bfloat16
    back = parity.flax_params_from_torch(model, config)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a,
               b in zip(jax.tree.leaves(back), jax.tree.leaves(params)))


def test_google_tree_loads_into_twin_strictly():
    tree = google_tree(TINY)
    model = parity.torch_model_from_flax(tree, TINY)  # load_state_dict(strict=True) inside
    images = random_images(TINY)
    with torch.no_grad():
        out = model(nchw(images)).numpy()
    assert rel_l2(out, _flax_forward(TINY)(tree, images)[0]) < 1e-5


def test_fused_qkv_layout_is_q_then_k_then_v():
    params = jax.tree.map(np.asarray, vit_jax.init_params(TINY, 5))
    sd = parity.flax_to_torch(params, TINY)
    attn = params["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_0"]
    d = TINY.hidden_size
    qkv = sd["blocks.1.attn.qkv.weight"]
    for i, part in enumerate(("query", "key", "value")):
        # torch row r of the q block = output feature r = (head r // hd, dim r % hd)
        np.testing.assert_array_equal(qkv[i * d : (i + 1) * d], attn[part]["kernel"].reshape(d, d).T)
        np.testing.assert_array_equal(sd["blocks.1.attn.qkv.bias"][i * d : (i + 1) * d], attn[part]["bias"].reshape(-1))
    np.testing.assert_array_equal(sd["patch_embed.proj.weight"][5, 2, 1, 3], params["embedding"]["kernel"][1, 3, 2, 5])


def test_missing_unexpected_and_misshaped_tensors_are_named():
    params = jax.tree.map(np.asarray, vit_jax.init_params(TINY))
    sd = parity.flax_to_torch(params, TINY)
    missing = {k: v for k, v in sd.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(MappingError, match=r"missing tensors \['blocks.1.mlp.fc2.bias'\]"):
        parity.torch_to_flax(missing, TINY)
    with pytest.raises(MappingError, match=r"unexpected tensors \['blocks.2.norm1.weight'\]"):
        parity.torch_to_flax({**sd, "blocks.2.norm1.weight": sd["blocks.1.norm1.weight"]}, TINY)
    with pytest.raises(MappingError, match=r"tensor 'head.weight' has shape \(10, 16\), expected \(10, 32\)"):
        parity.torch_to_flax({**sd, "head.weight": np.zeros((10, 16), np.float32)}, TINY)
    with pytest.raises(MappingError, match="missing parameters"):
        parity.flax_to_torch({k: v for k, v in params.items() if k != "head"}, TINY)
    with pytest.raises(MappingError, match="Transformer/posembed_input/pos_embedding' has shape"):
        parity.flax_to_torch(params, TINY.replace(image_size=32))


@pytest.mark.parametrize("overrides", [
    {},
    {"classifier": "gap", "representation_size": 24, "num_classes": 0},
    {"classifier": "token_unpooled", "qkv_bias": False, "image_size": (16, 24)},
    {"patch_norm": True, "attention_head_dim": 8, "posemb": "sincos2d"},
    {"attention_head_dim": 16, "num_heads": 2, "attention_out_proj": False, "hidden_size": 32},
    {"resnet_layers": (1, 2), "width_factor": 0.5, "image_size": 64, "patch_size": 1},
    {"resnet_layers": (), "width_factor": 0.5, "image_size": 64, "patch_size": 2},
    # the options of DeiT distilled, DINOv2 with registers, CLIP and MAE
    {"distilled": True, "layer_scale": True},
    {"num_register_tokens": 4, "posemb_class_slot": False, "mask_token": True, "layer_scale": True},
    {"pre_norm": True, "patch_bias": False, "head_bias": False, "gelu": "quick"},
    {"classifier": "token_gap", "fc_norm": True},
    # a MAP head, a packed SwiGLU, a SwiGLU with sub-LN and q/v biases (SigLIP, DINOv2-giant, EVA-02)
    {"classifier": "map"},
    {"mlp_type": "swiglu_packed", "layer_scale": True},
    {"mlp_type": "swiglu", "mlp_norm": True, "key_bias": False, "rope": True, "classifier": "gap"},
])
def test_expected_flax_shapes_from_the_rules_are_the_models(overrides):
    """The formats layer derives every leaf's shape from the config without tracing; the model must agree."""
    from vit_jax.formats.mapping import expected_flax_shapes, flatten
    from vit_jax.model import param_shapes

    config = get_config("ViT-testing", **overrides)
    traced = {key: tuple(leaf.shape) for key, leaf in flatten(param_shapes(config)).items()}
    assert expected_flax_shapes(config) == traced
