"""SigLIP written back for transformers: the directory loads strictly into SiglipVisionModel of the installed
transformers, 4.x or 5.x (CI runs this file under both), and computes the source's function."""

from __future__ import annotations

import pytest
import torch
from conftest import nchw, rel_l2
from family_helpers import FLOAT32, converted_matches, images, perturb

from parity.convert import convert

transformers = pytest.importorskip("transformers")


def test_siglip_vision_model_written_back_loads_strict(tmp_path):
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=28, patch_size=7)
    model = perturb(transformers.SiglipVisionModel(config), seed=3)
    model.save_pretrained(tmp_path / "hf")
    x = images(28, seed=1)
    with torch.no_grad():
        want = model(pixel_values=nchw(x)).pooler_output.numpy()
    converted_matches(tmp_path / "hf", tmp_path / "siglip.msgpack", want, x)

    convert(tmp_path / "siglip.msgpack", tmp_path / "back", to_format="hf")
    back, info = transformers.SiglipVisionModel.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        got = back.eval()(pixel_values=nchw(x)).pooler_output.numpy()
    assert rel_l2(got, want) < FLOAT32
