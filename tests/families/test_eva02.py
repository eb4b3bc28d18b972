"""EVA-02 from timm: the rotary embedding is scaled to the reference grid timm's architecture fixes (16 x 16,
ref_feat_shape), not to the model's own grid; converted and written back, timm computes the same function."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from conftest import nchw, rel_l2
from convert_cli_helpers import assert_fails_cleanly
from family_helpers import FLOAT32, converted_matches, images, perturb, save_timm_hub
from torchvision_stub import import_timm

from parity.convert import convert

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")


@pytest.mark.parametrize("arch", ["eva02_tiny_patch14_224", "eva02_base_patch14_224"])
def test_rope_reference_grid_is_the_architectures(tmp_path, arch):
    """A 4 x 4 grid (28 px, 7 px patches), model_args without ref_feat_shape: timm scales to 16 x 16."""
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, num_classes=3)
    model = perturb(timm.create_model(arch, pretrained=False, **args), seed=7)
    x = images(28)
    with torch.no_grad():
        want = model(nchw(x)).numpy()
    src = save_timm_hub(tmp_path / "hub", arch, model.state_dict(), args)
    config, _ = converted_matches(src, tmp_path / "eva.msgpack", want, x)
    assert (config.grid_size, config.rope_ref_grid) == ((4, 4), (16, 16))

    convert(tmp_path / "eva.msgpack", tmp_path / "back", to_format="timm-hub")
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["model_args"]["ref_feat_shape"] == [16, 16]
    back = timm.create_model(written["architecture"], pretrained=False, **written["model_args"]).eval()
    back.load_state_dict(safetensors.torch.load_file(tmp_path / "back" / "model.safetensors"), strict=True)
    with torch.no_grad():
        assert rel_l2(back(nchw(x)).numpy(), want) < FLOAT32


def test_mean_pooling_on_tensors_without_fc_norm_is_refused(tmp_path, capsys):
    """An Eva built with global_pool='token' (norm.*, no fc_norm.*) under a config.json whose model_args leave
    Eva's mean pooling: Eva would build fc_norm, which the tensors lack."""
    args = dict(img_size=28, patch_size=7, embed_dim=32, depth=1, num_heads=2, num_classes=0)
    token_pooled = perturb(timm.create_model("eva02_tiny_patch14_224", pretrained=False, global_pool="token", **args))
    src = save_timm_hub(tmp_path / "hub", "eva02_tiny_patch14_224", token_pooled.state_dict(), args)
    assert_fails_cleanly([src, tmp_path / "out.msgpack"], capsys, "architecture 'eva02_tiny_patch14_224'",
                         "'fc_norm.weight'", "lacks")
