"""CLIP from timm: every timm CLIP architecture builds ln_pre (and so no patch bias); a directory that names
one over tensors without them is refused in one line naming the missing tensor."""

from __future__ import annotations

import pytest
from convert_cli_helpers import assert_fails_cleanly
from family_helpers import perturb, save_timm_hub
from torchvision_stub import import_timm

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")

ARGS = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=0)


@pytest.mark.parametrize("arch", ["vit_base_patch16_clip_quickgelu_224", "vit_base_patch16_clip_224"])
def test_clip_architecture_on_plain_vit_tensors_is_refused(tmp_path, capsys, arch):
    plain = perturb(timm.create_model("vit_base_patch16_224", pretrained=False, **ARGS))
    src = save_timm_hub(tmp_path / "hub", arch, plain.state_dict(), ARGS)
    assert_fails_cleanly([src, tmp_path / "out.msgpack"], capsys, f"architecture {arch!r}", "'norm_pre.weight'",
                         "lacks")
