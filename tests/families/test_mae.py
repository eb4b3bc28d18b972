"""MAE fine-tunes from timm: model_args global_pool='avg' puts fc_norm after pooling (timm's default for that
pooling), so its tensors must hold fc_norm.* and no final norm.*."""

from __future__ import annotations

import pytest
import torch
from conftest import nchw
from convert_cli_helpers import assert_fails_cleanly
from family_helpers import converted_matches, images, perturb, save_timm_hub
from torchvision_stub import import_timm

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")

ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5)


def test_global_pool_avg_alone_means_fc_norm(tmp_path):
    """model_args global_pool='avg' without fc_norm: timm builds fc_norm; the conversion matches timm."""
    args = dict(ARGS, global_pool="avg")
    model = perturb(timm.create_model("vit_base_patch16_224", pretrained=False, **args), seed=2)
    x = images(32)
    with torch.no_grad():
        want = model(nchw(x)).numpy()
    src = save_timm_hub(tmp_path / "hub", "vit_base_patch16_224", model.state_dict(), args)
    config, _ = converted_matches(src, tmp_path / "mae.msgpack", want, x)
    assert (config.classifier, config.fc_norm) == ("token_gap", True)


def test_global_pool_avg_on_tensors_without_fc_norm_is_refused(tmp_path, capsys):
    """Tensors of a token-pooled ViT (norm.*, no fc_norm.*) under global_pool='avg': timm refuses to load
    them, and so does convert, naming the tensor."""
    token_pooled = perturb(timm.create_model("vit_base_patch16_224", pretrained=False, **ARGS))
    src = save_timm_hub(tmp_path / "hub", "vit_base_patch16_224", token_pooled.state_dict(),
                        dict(ARGS, global_pool="avg"))
    assert_fails_cleanly([src, tmp_path / "out.msgpack"], capsys, "model_args global_pool='avg'",
                         "'fc_norm.weight'", "lacks")
