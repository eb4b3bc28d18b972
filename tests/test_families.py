"""Today's ViT families in and out: timm hub directories and Hugging Face DINOv2, CLIP and DeiT directories.

Each source is the real timm 1.0.31 / transformers model, tiny, with every parameter (LayerScale, norms,
class, distillation and register tokens) moved away from its init. `python -m parity convert DIR
out.msgpack` (no other flag) brings it in: the Flax model and the PyTorch twin reproduce its output within
1e-5 relative L2 in float32. The way back is bit-exact and loads strictly into the same architecture.
timm needs tests/torchvision_stub.py (see test_convert_timm.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import apply, nchw, rel_l2
from test_convert_errors import assert_fails_cleanly, run_cli

from parity.convert import convert, read_flax_params
from parity.formats.timm_archs import PRESET_ARCHITECTURES, PRESET_MODEL_ARGS
from parity.mapping import expected_torch_shapes
from torchvision_stub import import_timm
from vit_jax import get_config
from vit_torch_ref.pretrained import load_pretrained as load_twin

timm = import_timm()
transformers = pytest.importorskip("transformers")
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
TIMM_CASES = {  # architecture -> tiny geometry (and, for an MAE fine-tune, its pooling)
    "deit_tiny_patch16_224": dict(img_size=32, patch_size=8),
    "deit_tiny_distilled_patch16_224": dict(img_size=32, patch_size=8),
    "deit3_small_patch16_224": dict(img_size=32, patch_size=8),
    "vit_small_patch14_dinov2": dict(img_size=28, patch_size=14),
    "vit_small_patch14_reg4_dinov2": dict(img_size=28, patch_size=14),
    "vit_base_patch16_clip_quickgelu_224": dict(img_size=32, patch_size=16),
    "vit_base_patch16_clip_224": dict(img_size=32, patch_size=16),
    "vit_base_patch16_224": dict(img_size=32, patch_size=8, global_pool="avg", fc_norm=True, num_classes=7),
}
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
HF_CASES = {  # class -> (config, the output the project's model gives)
    "Dinov2Model": (lambda: transformers.Dinov2Config(**_SMALL, image_size=28, patch_size=14, mlp_ratio=2),
                    "pooler_output"),
    "Dinov2WithRegistersModel": (lambda: transformers.Dinov2WithRegistersConfig(
        **_SMALL, image_size=28, patch_size=14, mlp_ratio=2, num_register_tokens=3), "pooler_output"),
    "CLIPVisionModelWithProjection": (lambda: transformers.CLIPVisionConfig(
        **_SMALL, intermediate_size=64, image_size=32, patch_size=16, projection_dim=8), "image_embeds"),
    "CLIPVisionModel": (lambda: transformers.CLIPVisionConfig(**_SMALL, intermediate_size=64, image_size=32,
                                                              patch_size=16), "pooler_output"),
    "DeiTForImageClassificationWithTeacher": (lambda: transformers.DeiTConfig(
        **_SMALL, intermediate_size=64, image_size=32, patch_size=16, num_labels=5), "logits"),
}


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved away from its init (LayerScale 1e-5, zero tokens, unit norms would hide errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def timm_model(arch: str):
    return perturb(timm.create_model(arch, pretrained=False, **TINY, **TIMM_CASES[arch]))


@pytest.fixture(scope="module")
def timm_dirs(tmp_path_factory):
    """Per architecture, timm's model and the hub directory its save_for_hf writes, built once for the module."""
    from timm.models._hub import save_for_hf

    root, models = tmp_path_factory.mktemp("timm"), {}
    for arch in TIMM_CASES:
        models[arch] = timm_model(arch)
        save_for_hf(models[arch], root / arch, safe_serialization=True)
    return root, models


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """One transformers directory per class (save_pretrained), built once for the module."""
    root = tmp_path_factory.mktemp("hf")
    for name, (config, _) in HF_CASES.items():
        torch.manual_seed(0)
        perturb(getattr(transformers, name)(config())).save_pretrained(root / name)
    return root


def check_in(src: Path, dst: Path, want_fn, capsys) -> tuple:
    """`convert SRC DST.msgpack` at the CLI, then the Flax model and the twin against the source's output."""
    code, err = run_cli([src, dst], capsys)
    assert code == 0, err
    config, params = read_flax_params(dst)
    images = np.random.default_rng(0).uniform(-1, 1, (2, *config.image_hw, 3)).astype(np.float32)
    with torch.no_grad():
        want = want_fn(nchw(images)).numpy()
    assert rel_l2(apply(config, params, images), want) < 1e-5
    _, twin = load_twin(src)
    with torch.no_grad():
        assert rel_l2(twin(nchw(images)).numpy(), want) < 1e-5
    return config, params


def same_state(want: dict, got: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@needs_timm
@pytest.mark.parametrize("arch", sorted(TIMM_CASES))
def test_timm_hub_directory_in_and_back(timm_dirs, tmp_path, capsys, arch):
    root, models = timm_dirs
    source = models[arch]
    config, _ = check_in(root / arch, tmp_path / "x.msgpack", source, capsys)
    assert config.name == arch
    convert(tmp_path / "x.msgpack", tmp_path / "back", to_format="timm-hub")
    hub = json.loads((tmp_path / "back" / "config.json").read_text())
    assert hub["architecture"] == arch
    rebuilt = timm.create_model(hub["architecture"], pretrained=False, **hub["model_args"])
    rebuilt.load_state_dict(safetensors.torch.load_file(tmp_path / "back" / "model.safetensors"), strict=True)
    same_state(source.state_dict(), rebuilt.state_dict())
    # timm's own hub loader reads the directory (strict load of its pretrained path)
    same_state(source.state_dict(), timm.create_model(f"local-dir:{tmp_path / 'back'}", pretrained=True).state_dict())


@pytest.mark.parametrize("name", sorted(HF_CASES))
def test_hf_directory_in_and_back(hf_dirs, tmp_path, capsys, name):
    cls, output = getattr(transformers, name), HF_CASES[name][1]
    source = cls.from_pretrained(hf_dirs / name).eval()
    config, _ = check_in(hf_dirs / name, tmp_path / "x.msgpack",
                         lambda x: getattr(source(pixel_values=x), output), capsys)
    assert config.name == name
    convert(tmp_path / "x.msgpack", tmp_path / "back", to_format="hf")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["architectures"] == [name]
    back, info = cls.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    same_state(source.state_dict(), back.state_dict())
