"""The PyTorch twin: goldens, timm's key names, shapes, determinism, bad input."""

import pytest
import torch
from conftest import nchw, random_images
from golden_params import GOLDEN_PARAM_COUNTS

from vit_torch_ref import VisionTransformer, get_config

TINY = get_config("ViT-testing", head_zero_init=False)


@pytest.mark.parametrize("name", sorted(GOLDEN_PARAM_COUNTS))
def test_torch_param_count_matches_golden(name):
    with torch.device("meta"):  # no memory for H/14's 632M parameters
        model = VisionTransformer(get_config(name))
    assert sum(p.numel() for p in model.parameters()) == GOLDEN_PARAM_COUNTS[name]


def timm_keys(depth, cls=True, pos=True, qkv_bias=True, pre_logits=False, head=True):
    """timm VisionTransformer state-dict keys for a plain ViT (written out from timm's naming)."""
    keys = ["patch_embed.proj.weight", "patch_embed.proj.bias"]
    keys += ["cls_token"] if cls else []
    keys += ["pos_embed"] if pos else []
    for i in range(depth):
        b = f"blocks.{i}."
        keys += [b + "norm1.weight", b + "norm1.bias", b + "attn.qkv.weight"]
        keys += [b + "attn.qkv.bias"] if qkv_bias else []
        keys += [b + s for s in ("attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    keys += ["norm.weight", "norm.bias"]
    keys += ["pre_logits.fc.weight", "pre_logits.fc.bias"] if pre_logits else []
    keys += ["head.weight", "head.bias"] if head else []
    return set(keys)


def test_state_dict_keys_follow_timm():
    assert set(VisionTransformer(TINY).state_dict()) == timm_keys(2)
    gap = TINY.replace(classifier="gap", qkv_bias=False, representation_size=16, num_classes=0, posemb="sincos2d")
    assert set(VisionTransformer(gap).state_dict()) == timm_keys(2, cls=False, pos=False, qkv_bias=False,
                                                                 pre_logits=True, head=False)
    sd = VisionTransformer(get_config("ViT-B_16")).state_dict()
    assert sd["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["patch_embed.proj.weight"].shape == (768, 3, 16, 16)
    assert sd["pos_embed"].shape == (1, 197, 768)


@pytest.mark.parametrize(
    "overrides,out_shape",
    [
        ({"classifier": "token"}, (2, 10)),
        ({"classifier": "gap"}, (2, 10)),
        ({"classifier": "unpooled"}, (2, 16, 10)),
        ({"classifier": "token_unpooled"}, (2, 17, 10)),
        ({"classifier": "token", "num_classes": 0}, (2, 32)),
        ({"classifier": "gap", "num_classes": 0, "representation_size": 24}, (2, 24)),
    ],
)
def test_output_shapes_per_classifier(overrides, out_shape):
    config = TINY.replace(**overrides)
    model = VisionTransformer(config).eval()
    with torch.no_grad():
        out, inter = model(nchw(random_images(config)), return_intermediates=True, return_attention=True)
    assert tuple(out.shape) == out_shape
    assert list(inter) == config.layer_names(attention=True)


def test_deterministic_in_eval_and_random_in_train():
    config = TINY.replace(dropout_rate=0.1, attention_dropout_rate=0.1, stochastic_depth_rate=0.2)
    model = VisionTransformer(config)
    x = nchw(random_images(config))
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        model.train()
        torch.manual_seed(0)
        t1 = model(x)
        torch.manual_seed(0)
        t2 = model(x)
        t3 = model(x)
    assert torch.equal(a, b) and torch.equal(t1, t2) and not torch.allclose(t1, t3)


def test_attention_probability_path_matches_fused_sdpa():
    model = VisionTransformer(TINY).eval()
    x = nchw(random_images(TINY))
    with torch.no_grad():
        fused = model(x)
        explicit, inter = model(x, return_attention=True)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inter["blocks.1.attn_probs"].sum(-1), torch.ones(2, 2, 17))


def test_bf16_compute_autocasts_over_float32_params():
    config = TINY.replace(dtype="bfloat16")
    model = VisionTransformer(config).eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        out = model(nchw(random_images(config)))
        ref = VisionTransformer(TINY).eval()
        ref.load_state_dict(model.state_dict())
        ref_out = ref(nchw(random_images(config)))
    assert out.dtype == torch.bfloat16
    assert float((out.float() - ref_out).norm() / ref_out.norm()) < 3e-2


def test_bad_images_give_clear_errors():
    model = VisionTransformer(TINY)
    with pytest.raises(ValueError, match="images have 16 channels, config expects 3"):
        model(torch.zeros(1, 16, 16, 3))
    with pytest.raises(ValueError, match="image size 32x32 does not match"):
        model(torch.zeros(1, 3, 32, 32))
