"""Google-layout .npz -> .safetensors that timm's own VisionTransformer loads with strict=True, and back.

Needs timm (`pip install --no-deps timm`: its dependencies would pull a
torchvision build that does not work with CPU torch here); torchvision's names
are stood in for by tests/torchvision_stub.py. Skipped where timm is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.torch
import torch
from checkpoint_writers import random_flax_params, write_google_npz
from conftest import nchw, random_images, rel_l2
from torchvision_stub import import_timm

import vit_jax
from parity.convert import convert
from vit_jax import get_config
from vit_jax.formats.mapping import unflatten

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")


@pytest.mark.parametrize("overrides", [{}, dict(qkv_bias=False, num_classes=0), dict(classifier="gap")])
def test_timm_loads_converted_google_npz_strictly_and_matches(tmp_path, overrides):
    from timm.models.vision_transformer import VisionTransformer

    config = get_config("ViT-testing").replace(**overrides)
    flat = random_flax_params(config, seed=5)
    write_google_npz(tmp_path / "g.npz", flat)
    convert(tmp_path / "g.npz", tmp_path / "g.safetensors")

    gap = config.classifier == "gap"
    model = VisionTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size,
        depth=config.num_layers, num_heads=config.num_heads, mlp_ratio=config.mlp_dim / config.hidden_size,
        qkv_bias=config.qkv_bias, num_classes=config.num_classes, class_token=not gap,
        global_pool="avg" if gap else "token", fc_norm=False,  # Google's gap: final norm, then mean
    ).eval()
    model.load_state_dict(safetensors.torch.load_file(tmp_path / "g.safetensors"), strict=True)

    # timm runs exact GELU; the Flax model with the same numerics must give the same outputs.
    images = random_images(config, batch=3)
    with torch.no_grad():
        timm_out = model(nchw(images)).numpy()
    flax_out = vit_jax.VisionTransformer(config.replace(gelu="exact")).apply({"params": unflatten(flat)}, images)
    assert rel_l2(timm_out, np.asarray(flax_out)) < 1e-5

    # And back: timm's own state dict, saved by timm's side, converts to the original .npz tensors.
    safetensors.torch.save_file(model.state_dict(), tmp_path / "from_timm.safetensors")
    (tmp_path / "from_timm.safetensors.json").write_text(config.to_json())
    convert(tmp_path / "from_timm.safetensors", tmp_path / "back.npz")
    back = np.load(tmp_path / "back.npz")
    assert sorted(back.files) == sorted(flat)
    for key, value in flat.items():
        assert np.array_equal(back[key], value), key


@pytest.mark.parametrize("preset, timm_name", [("ViT-g_14", "vit_giant_patch14_224"),
                                               ("ViT-G_14", "vit_gigantic_patch14_224")])
def test_giant_presets_have_timms_state_dict(preset, timm_name):
    """The giant presets are timm's models (built on the meta device: no memory; 2 of their blocks, as the golden
    parameter counts cover the depth), key for key and shape for shape, and a checkpoint of either width converts
    with its 16 heads inferred."""
    from vit_jax.formats.infer import STANDARD_HEADS
    from vit_jax.formats.mapping import expected_torch_shapes

    timm = import_timm()
    model = timm.create_model(timm_name, num_classes=1000, device="meta", depth=2)
    config = get_config(preset, num_layers=2)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_torch_shapes(config)
    assert STANDARD_HEADS[config.hidden_size] == config.num_heads == 16
