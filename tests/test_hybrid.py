"""Hybrid ResNet + ViT: the stem's function, its names in every format, timm's hybrid, bad input.

The stem is checked against a NumPy computation of Google's definitions; the
conversions against checkpoints written in each format's own layout, and timm's
hybrid VisionTransformer both loads what we write and writes what we read.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from checkpoint_writers import random_flax_params, write_google_npz
from conftest import nchw, random_images, rel_l2
from torchvision_stub import import_timm

import vit_jax
from parity.convert import convert
from vit_jax import ViTConfig, get_config
from vit_jax.formats.base import ConversionError, TensorSource
from vit_jax.formats.infer import build_config
from vit_jax.formats.mapping import flatten, unflatten
from vit_jax.formats.read import read_flax_params
from vit_jax.model import apply_with_intermediates
from vit_torch_ref.model import VisionTransformer as TorchViT

# Two stages (stride 8) of width 32 on 32 px: a 4x4 grid of 1x1 patches.
SMALL = get_config("R26+ViT-S_32").replace(
    name="small-hybrid", image_size=32, resnet_layers=(1, 2), width_factor=0.5, hidden_size=32, mlp_dim=64,
    num_heads=2, num_layers=1, num_classes=5,
)
# The stem-only form (Google's R+ViT-Ti_16): root conv + pool, then 2x2 patches.
ROOT_ONLY = SMALL.replace(name="root-only", resnet_layers=(), patch_size=2, image_size=16)
TIMM_NUMERICS = dict(gelu="exact", stem_ws_form="var", stem_ws_eps=1e-8, stem_gn_eps=1e-5)


# -- the stem's function, by hand ------------------------------------------------------
def _same_pad(x, kernel, stride, value):
    """TF 'SAME' on NHWC: total padding so that out = ceil(in / stride), the odd pixel after."""
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)], constant_values=value)


def _np_conv(x, w, stride):
    """Weight-standardised (Google: (w - mean) / (std + 1e-5) over h, w, in), 'SAME', no bias."""
    w = w.astype(np.float64)
    w = (w - w.mean(axis=(0, 1, 2))) / (w.std(axis=(0, 1, 2)) + 1e-5)
    k = w.shape[0]
    x = _same_pad(x, k, stride, 0.0)
    n, h, wd, _ = x.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, oh, ow, w.shape[3]))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nhwc,cd->nhwd", x[:, i:i + stride * oh:stride, j:j + stride * ow:stride], w[i, j])
    return out


def _np_group_norm(x, scale, bias, groups=32, eps=1e-6):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _np_max_pool(x):
    x = _same_pad(x, 3, 2, -np.inf)
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [x[:, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def _np_stem(p, x, layers):
    relu = functools.partial(np.maximum, 0.0)
    x = relu(_np_group_norm(_np_conv(x, p["conv_root/kernel"], 2), p["gn_root/scale"], p["gn_root/bias"]))
    x = _np_max_pool(x)
    for i, units in enumerate(layers):
        for j in range(units):
            u = f"block{i + 1}/unit{j + 1}/"
            stride = 2 if i > 0 and j == 0 else 1

            def conv_gn(y, r, s=1):
                return _np_group_norm(_np_conv(y, p[u + f"conv{r}/kernel"], s), p[u + f"gn{r}/scale"],
                                      p[u + f"gn{r}/bias"])

            residual = x
            if j == 0:  # every stage's first unit changes width or stride: projection
                residual = conv_gn(x, "_proj", stride)
            y = relu(conv_gn(x, 1))
            y = relu(conv_gn(y, 2, stride))
            x = relu(residual + conv_gn(y, 3))
    return x


@pytest.mark.parametrize("config", [SMALL, ROOT_ONLY], ids=["stages", "root-only"])
def test_stem_computes_googles_definition_in_both_frameworks(config):
    flat = random_flax_params(config, seed=1)
    images = random_images(config, batch=2)
    want = _np_stem(flat, images.astype(np.float64), config.resnet_layers)
    assert want.shape[1:] == (*config.stem_hw, config.stem_width)

    _, inter = apply_with_intermediates(vit_jax.VisionTransformer(config), {"params": unflatten(flat)}, images)
    assert rel_l2(inter["stem"], want) < 2e-6

    twin = TorchViT(config).eval()
    twin.load_state_dict(vit_jax_to_torch(flat, config), strict=True)
    with torch.no_grad():
        _, tinter = twin(nchw(images), return_intermediates=True)
    assert rel_l2(tinter["stem"].numpy(), want) < 2e-6
    assert config.layer_names()[:2] == ["stem", "patch_embed"]


def vit_jax_to_torch(flat, config):
    from vit_jax.formats.mapping import flax_to_torch

    return {k: torch.from_numpy(np.array(v)) for k, v in flax_to_torch(unflatten(flat), config).items()}


def test_fresh_init_follows_google():
    """Each unit's last GroupNorm starts at zero scale (the unit starts as its projection), in both models."""
    params = flatten(vit_jax.init_params(SMALL, 0))
    assert not np.any(params["block2/unit2/gn3/scale"]) and np.all(params["block2/unit2/gn2/scale"] == 1)
    assert "block2/unit2/conv_proj/kernel" not in params and "block2/unit1/conv_proj/kernel" in params
    assert "conv1/bias" not in str(list(params))
    twin = TorchViT(SMALL).state_dict()
    assert not twin["patch_embed.backbone.stages.1.blocks.1.norm3.weight"].any()


# -- conversions ------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SMALL, ROOT_ONLY], ids=["stages", "root-only"])
def test_npz_flax_torch_round_trips_are_bit_exact(tmp_path, config):
    flat = random_flax_params(config, seed=2)
    write_google_npz(tmp_path / "g.npz", flat)
    resolved, params = read_flax_params(tmp_path / "g.npz")
    assert (resolved.resnet_layers, resolved.width_factor, resolved.image_size) == (
        config.resnet_layers, config.width_factor, config.image_size)
    assert resolved.function_dict() == config.replace(name=resolved.name).function_dict()
    got = flatten(params)
    assert set(got) == set(flat) and all(np.array_equal(got[k], flat[k]) for k in flat)

    convert(tmp_path / "g.npz", tmp_path / "t.safetensors")
    convert(tmp_path / "t.safetensors", tmp_path / "back.npz")
    back = np.load(tmp_path / "back.npz")
    assert sorted(back.files) == sorted(flat)
    assert all(np.array_equal(back[k], flat[k]) for k in flat)


def test_missing_unit_is_named(tmp_path):
    config = SMALL.replace(resnet_layers=(3, 1))
    flat = {k: v for k, v in random_flax_params(config).items() if not k.startswith("block1/unit2/")}
    write_google_npz(tmp_path / "g.npz", flat)
    with pytest.raises(ConversionError, match=r"missing tensor 'block1/unit2/conv1/kernel'.*ResNet stem \(3, 1\)"):
        read_flax_params(tmp_path / "g.npz")
    flat = random_flax_params(config)
    del flat["block2/unit1/gn_proj/scale"]
    write_google_npz(tmp_path / "g.npz", flat)
    with pytest.raises(ConversionError, match=r"missing tensor 'block2/unit1/gn_proj/scale'"):
        read_flax_params(tmp_path / "g.npz")


def test_stage_depth_contradicting_the_named_preset_is_named():
    """An R50 file whose third stage has 6 units, read with --config R50+ViT-B_16 (shapes only, no data)."""
    preset = get_config("R50+ViT-B_16")
    shapes = flatten(vit_jax.param_shapes(preset.replace(resnet_layers=(3, 4, 6))))
    source = TensorSource("r50.npz", "google-npz", "flax", {k: tuple(v.shape) for k, v in shapes.items()}, None)
    with pytest.raises(ConversionError, match=r"config 'R50\+ViT-B_16' says resnet_layers=\(3, 4, 9\), but tensor "
                                              r".*block3/unit6/\S+ \(last unit of each stage\) implies "
                                              r"resnet_layers=\(3, 4, 6\)"):
        build_config(source, preset, config_is_preset=True)
    assert build_config(source).resnet_layers == (3, 4, 6)


# -- timm's own hybrid ------------------------------------------------------------------
timm = import_timm()
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")


def timm_hybrid(config: ViTConfig):
    """timm's hybrid VisionTransformer of `config`'s shape, its backbone built as timm's `_resnetv2` builds it."""
    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_hybrid import HybridEmbed

    conv = functools.partial(StdConv2dSame, eps=1e-8)
    width = int(64 * config.width_factor)
    if config.resnet_layers:  # timm's factories have 64-wide stems; the same ResNetV2 at our width
        backbone = ResNetV2(layers=config.resnet_layers, channels=tuple(4 * width * 2**i for i in range(4)),
                            stem_chs=width, num_classes=0, global_pool="", preact=False, stem_type="same",
                            conv_layer=conv)
    else:
        backbone = create_resnetv2_stem(config.num_channels, width, stem_type="same", preact=False, conv_layer=conv)
    return VisionTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
        depth=config.num_layers, num_heads=config.num_heads, mlp_ratio=config.mlp_dim / config.hidden_size,
        num_classes=config.num_classes, embed_layer=functools.partial(HybridEmbed, backbone=backbone),
    ).eval()


@needs_timm
@pytest.mark.parametrize("config", [SMALL, ROOT_ONLY], ids=["stages", "root-only"])
def test_timm_loads_our_safetensors_as_its_npz_loader_does(tmp_path, config):
    import safetensors.torch
    from timm.models.vision_transformer import _load_weights

    flat = random_flax_params(config, seed=3)
    # timm's loader reads the original paper's pre-Linen block names, as Google's R50+ViT-B_16 file has them.
    write_google_npz(tmp_path / "g.npz", flat, pre_linen=True)
    convert(tmp_path / "g.npz", tmp_path / "g.safetensors")
    ours = timm_hybrid(config)
    ours.load_state_dict(safetensors.torch.load_file(tmp_path / "g.safetensors"), strict=True)
    theirs = timm_hybrid(config)
    _load_weights(theirs, str(tmp_path / "g.npz"))
    theirs_sd = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs_sd[key]), key

    # timm runs its own numerics; the Flax model and the twin with them give timm's logits.
    images = random_images(config, batch=2)
    with torch.no_grad():
        timm_out = ours(nchw(images)).numpy()
    timm_config = config.replace(**TIMM_NUMERICS)
    flax_out = vit_jax.VisionTransformer(timm_config).apply({"params": unflatten(flat)}, images)
    assert rel_l2(flax_out, timm_out) < 1e-5
    twin = TorchViT(timm_config).eval()
    twin.load_state_dict(safetensors.torch.load_file(tmp_path / "g.safetensors"), strict=True)
    with torch.no_grad():
        assert rel_l2(twin(nchw(images)).numpy(), timm_out) < 1e-5
    # Google's numerics are a different function: the recorded ones matter.
    google_out = vit_jax.VisionTransformer(config).apply({"params": unflatten(flat)}, images)
    assert rel_l2(google_out, timm_out) > 1e-5


@needs_timm
def test_timm_state_dict_reads_with_timms_numerics_and_back(tmp_path):
    import safetensors.torch

    config = SMALL.replace(hidden_size=192, num_heads=3)  # a standard width: the heads follow from it
    model = timm_hybrid(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "timm.safetensors")
    resolved, params = read_flax_params(tmp_path / "timm.safetensors")
    assert resolved.function_dict() == config.replace(name=resolved.name, **TIMM_NUMERICS).function_dict()
    images = random_images(config, batch=2)
    with torch.no_grad():
        want = model(nchw(images)).numpy()
    assert rel_l2(vit_jax.VisionTransformer(resolved).apply({"params": params}, images), want) < 1e-5
    convert(tmp_path / "timm.safetensors", tmp_path / "g.npz")
    convert(tmp_path / "g.npz", tmp_path / "back.safetensors")
    back = safetensors.torch.load_file(tmp_path / "back.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key


# -- parity report ----------------------------------------------------------------------
@pytest.mark.slow
def test_parity_report_passes_with_backward(tmp_path, capsys):
    from parity_report_helpers import check_passing_report, run_report

    path = tmp_path / "small.json"
    path.write_text(SMALL.to_json())
    code, report = run_report(tmp_path, "--config", str(path), "--backward")
    assert code == 0, capsys.readouterr()
    check_passing_report(report, SMALL, backward=True)
    forward = {r["name"]: r for r in report["rows"] if r["section"] == "forward"}
    assert forward["stem"]["rel_l2"] < 1e-5
    grads = {r["name"] for r in report["rows"] if r["section"] == "gradients" and r["judged"]}
    assert {"conv_root/kernel", "block2/unit2/conv1/kernel", "block2/unit1/gn_proj/scale"} <= grads


@pytest.mark.parametrize("target", ["hf", "torchvision.pth"])
def test_formats_without_hybrids_refuse_them(tmp_path, target):
    write_google_npz(tmp_path / "g.npz", random_flax_params(ROOT_ONLY))
    fmt = {"hf": "hf", "torchvision.pth": "torchvision"}[target]
    with pytest.raises(ConversionError, match=r"cannot express this model: a ResNet stem \(resnet_layers=\(\)"):
        convert(tmp_path / "g.npz", tmp_path / target, to_format=fmt)
    assert not (tmp_path / target).exists()


def test_stem_flops_match_xlas_count():
    """The conv count of vit_jax.flops is XLA's count of the stem less its norms and activations (a few %)."""
    import flax.linen as nn
    import jax

    from vit_jax.flops import forward_flops, stem_flops
    from vit_jax.resnet import resnet_stem

    config = get_config("R50+ViT-B_16", image_size=(80, 48))

    class Stem(nn.Module):
        @nn.compact
        def __call__(self, x):
            return resnet_stem(config, x)

    images = jax.numpy.zeros((1, 80, 48, 3))
    variables = jax.eval_shape(Stem().init, jax.random.key(0), images)
    cost = jax.jit(Stem().apply).lower(variables, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert 0.85 < stem_flops(config) / cost["flops"] < 1.0
    assert forward_flops(config) - forward_flops(config.replace(resnet_layers=None, patch_size=16)) > stem_flops(config)


@pytest.mark.parametrize("overrides, message", [
    (dict(resnet_layers=(3, 0)), r"resnet_layers must be None \(no stem\) or a tuple of positive unit counts"),
    (dict(width_factor=0.3), r"width_factor 0.3 gives a root width of 19; it must be a positive multiple of the 32"),
    (dict(width_factor="1"), r"width_factor '1' gives a root width of 0"),
    (dict(stem_ws_form="both"), r"stem_ws_form 'both' is not one of \('std', 'var'\)"),
    (dict(stem_gn_eps=0.0), r"stem_gn_eps must be > 0"),
    (dict(patch_size=3), r"the ResNet stem's 4x4 output \(image 32x32, stride 8\) is not divisible by patch size 3x3"),
])
def test_bad_stem_configs_are_named(overrides, message):
    with pytest.raises(vit_jax.ConfigError, match=message):
        SMALL.replace(**overrides)


def test_geometry_follows_the_stem():
    c = get_config("R50+ViT-B_16")
    assert (c.stem_stride, c.stem_hw, c.stem_width, c.grid_size, c.seq_len) == (16, (14, 14), 1024, (14, 14), 197)
    c = get_config("R+ViT-Ti_16", image_size=384)
    assert (c.stem_stride, c.stem_width, c.grid_size) == (4, 64, (12, 12))
    assert get_config("R50+ViT-L_32", image_size=(230, 200)).stem_hw == (8, 7)  # 'SAME': ceil at every stride
    assert ViTConfig.from_dict(json.loads(SMALL.to_json())) == SMALL  # JSON gives a list, the config keeps a tuple


TIMM_NAMES = {"R+ViT-Ti_16": "vit_tiny_r_s16_p8_224", "R26+ViT-S_32": "vit_small_r26_s32_224",
              "R26+ViT-B_32": "vit_base_r26_s32_224", "R50+ViT-B_16": "vit_base_r50_s16_224",
              "R50+ViT-L_32": "vit_large_r50_s32_224"}


@needs_timm
@pytest.mark.parametrize("preset", sorted(TIMM_NAMES))
def test_presets_have_timms_state_dict(preset):
    """Every key and shape of timm's registered hybrid (built on the meta device) is the mapping's for the preset."""
    from vit_jax.formats.mapping import expected_torch_shapes

    model = timm.create_model(TIMM_NAMES[preset], num_classes=1000, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_torch_shapes(get_config(preset))
