"""DeiT, DINOv2, CLIP and MAE in and out: timm hub directories and Hugging Face DINOv2, CLIP and DeiT directories.

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
from convert_cli_helpers import assert_fails_cleanly
from family_helpers import check_in, perturb, same_state
from torchvision_stub import import_timm

from parity.convert import convert
from vit_jax import get_config
from vit_jax.formats.mapping import expected_torch_shapes
from vit_jax.formats.read import read_flax_params
from vit_jax.formats.timm_archs import PRESET_ARCHITECTURES, PRESET_MODEL_ARGS

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


def test_clip_model_directory_gives_its_vision_tower(tmp_path, capsys):
    """A whole CLIPModel (what the hub's openai/clip-vit-* hold): its image features in, the tower back out."""
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(**_SMALL, intermediate_size=64, image_size=32, patch_size=16), projection_dim=8)
    torch.manual_seed(0)
    source = perturb(transformers.CLIPModel(config))
    source.save_pretrained(tmp_path / "clip")

    def image_features(x):
        out = source.get_image_features(pixel_values=x)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    check_in(tmp_path / "clip", tmp_path / "x.msgpack", image_features, capsys)
    convert(tmp_path / "x.msgpack", tmp_path / "back", to_format="hf")
    back, info = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path / "back",
                                                                            output_loading_info=True)
    assert not any(info.values()), info
    tower = {k: v for k, v in source.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    same_state(tower, back.state_dict())


# -- bad input: one error line naming what is wrong -------------------------------------
def _edit_config(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    data = json.loads((dst / "config.json").read_text())
    edit(data)
    (dst / "config.json").write_text(json.dumps(data))
    return dst


@needs_timm
@pytest.mark.parametrize("edit, fragments", [
    (lambda d: d.update(architecture="convnext_tiny"), ["unknown timm architecture 'convnext_tiny'"]),
    (lambda d: d["model_args"].update(qk_norm=True), ["model_args ['qk_norm'] are not supported"]),
    (lambda d: d["model_args"].update(reg_tokens=2), ["num_register_tokens=2", "reg_token", "(1, 4, 32)"]),
], ids=["architecture", "model_args", "disagreeing"])
def test_bad_timm_directories_are_named(timm_dirs, tmp_path, capsys, edit, fragments):
    src = _edit_config(timm_dirs[0] / "vit_small_patch14_reg4_dinov2", tmp_path / "src", edit)
    assert_fails_cleanly([src, tmp_path / "out.msgpack"], capsys, "config.json" if len(fragments) < 3 else "",
                         *fragments)


@pytest.mark.parametrize("edit, fragments", [
    (lambda d: d.update(model_type="swin"), ["model_type 'swin' is not supported", "'dinov2'"]),
    (lambda d: d.update(hidden_size=64), ["hidden_size=64", "embeddings.patch_embeddings.projection.weight"]),
    (lambda d: d.update(use_swiglu_ffn=True), ["says mlp_type='swiglu_packed'", "implies mlp_type='gelu'"]),
], ids=["model_type", "disagreeing", "swiglu"])
def test_bad_hf_directories_are_named(hf_dirs, tmp_path, capsys, edit, fragments):
    src = _edit_config(hf_dirs / "Dinov2Model", tmp_path / "src", edit)
    assert_fails_cleanly([src, tmp_path / "out.msgpack"], capsys, *fragments)


def test_families_the_target_cannot_hold_are_refused(hf_dirs, tmp_path, capsys):
    """A DINOv2 into torchvision's layout: the options are named; a CLIP tower into a timm directory is fine."""
    assert_fails_cleanly([hf_dirs / "Dinov2Model", tmp_path / "t.pth", "--to", "torchvision"], capsys,
                         "torchvision's VisionTransformer cannot express", "layer_scale=True", "mask_token=True")
    convert(hf_dirs / "CLIPVisionModel", tmp_path / "timm", to_format="timm-hub")
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["architecture"] == \
        "vit_base_patch16_clip_quickgelu_224"


# -- position grids resized the way each source does ----------------------------------------------------
def test_hf_dinov2_at_another_size_matches_its_own_interpolation(hf_dirs, tmp_path):
    """convert --image-size resizes as transformers' DINOv2 does at run time (bicubic, align_corners=False)."""
    source = transformers.Dinov2Model.from_pretrained(hf_dirs / "Dinov2Model").eval()
    convert(hf_dirs / "Dinov2Model", tmp_path / "x.msgpack", image_size=42)  # 2x2 patches -> 3x3
    config, params = read_flax_params(tmp_path / "x.msgpack")
    assert config.posemb_resize == "torch_bicubic"
    images = np.random.default_rng(0).uniform(-1, 1, (2, 42, 42, 3)).astype(np.float32)
    with torch.no_grad():
        want = source(pixel_values=nchw(images)).pooler_output.numpy()
    assert rel_l2(apply(config, params, images), want) < 1e-5


@needs_timm
@pytest.mark.parametrize("old, new", [((37, 37), (16, 16)), ((4, 4), (7, 5))])
def test_timm_resample_is_matched(old, new):
    """timm's resample_abs_pos_embed (bicubic, antialias) as NumPy, down (518 -> 224 px) and up."""
    from timm.layers import resample_abs_pos_embed

    from vit_jax.posemb import resize_pos_embed

    grid = np.random.default_rng(0).standard_normal((1, 1 + old[0] * old[1], 8)).astype(np.float32)
    want = resample_abs_pos_embed(torch.from_numpy(grid), list(new), list(old), num_prefix_tokens=1).numpy()
    got = resize_pos_embed(grid, new, 1, old, "torch_bicubic_antialias")
    assert rel_l2(got, want) < 1e-6 and np.array_equal(got[:, :1], grid[:, :1])


# -- presets ------------------------------------------------------------------------------
# One size per family (L and H differ only in widths and depth; their counts are test_config's goldens).
@needs_timm
@pytest.mark.parametrize("preset", ["DeiT-Ti_16", "DeiT-Ti_16_distilled", "DeiT3-S_16", "DINOv2-S_14",
                                    "DINOv2-S_14_reg4", "CLIP-B_32", "MAE-B_16"])
def test_presets_have_timms_state_dict(preset):
    """Every key and shape of timm's model (on the meta device, at its default head) is the mapping's for the preset."""
    model = timm.create_model(PRESET_ARCHITECTURES[preset], device="meta", **PRESET_MODEL_ARGS.get(preset, {}))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_torch_shapes(get_config(preset))


# -- the parity report, layer by layer with gradients, on a checkpoint of each family ---------------------
# Four runs cover every option: distillation (DeiT), LayerScale + registers + no class slot (DINOv2 reg, as
# DeiT III's posemb), ln_pre + QuickGELU + bias-free patch and head (CLIP), token_gap + fc_norm (MAE).
@pytest.mark.slow
@pytest.mark.parametrize("source", ["hf/DeiTForImageClassificationWithTeacher", "timm/vit_small_patch14_reg4_dinov2",
                                    "hf/CLIPVisionModelWithProjection", "timm/vit_base_patch16_224"])
def test_parity_report_passes_on_each_family(timm_dirs, hf_dirs, tmp_path, capsys, source):
    from parity_report_helpers import check_passing_report, run_report

    kind, name = source.split("/")
    if kind == "timm" and timm is None:
        pytest.skip("timm is not installed")
    path = (timm_dirs[0] if kind == "timm" else hf_dirs) / name
    code, report = run_report(tmp_path, "--checkpoint", str(path), "--backward")
    assert code == 0, capsys.readouterr()
    config, _ = read_flax_params(path)
    check_passing_report(report, config, backward=True)


# -- fine-tuning ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_init_fine_tunes_a_distilled_deit(hf_dirs, tmp_path):
    """train.py --init DIR: the HF DeiT's two heads replaced for digits' 10 classes, the loss falls."""
    from train_runs import final_params, records

    from vit_jax import train_cli

    workdir = tmp_path / "run"
    argv = ["--init", str(hf_dirs / "DeiTForImageClassificationWithTeacher"), "--image-size", "32", "--steps", "30",
            "--warmup-steps", "3", "--lr", "3e-3", "--log-every", "1", "--eval-every", "30", "--no-progress",
            "--workdir", str(workdir)]
    assert train_cli.main(argv) == 0
    model = json.loads((workdir / "config.json").read_text())["model"]
    assert model["distilled"] and model["num_classes"] == 10 and model["layer_norm_eps"] == 1e-12
    params = final_params(str(workdir))
    assert params["head"]["kernel"].shape == params["head_dist"]["kernel"].shape == (32, 10)
    losses = [r["loss"] for r in records(str(workdir))]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])  # from ln(10): zero heads
