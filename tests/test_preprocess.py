"""`vit_jax.load_transform`: a checkpoint's own eval preprocessing, on real photographs (scikit-learn's two
427x640 sample photos, and crops of them that are tall and of odd sizes).

transformers: against its own PIL image processors (the backend it uses without torchvision). timm: the settings
against timm's own `resolve_data_config`; the pixels against timm's `create_transform` where a real torchvision is
importable, else against `timm_eval_reference`, timm's eval transform written out with torchvision's formulas."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from hub_cache import add_snapshot, use_cache
from PIL import Image
from torchvision_stub import import_timm

import vit_jax
from vit_jax.data.errors import DataError
from vit_jax.data.preprocess import load_transform, timm_transform

transformers = pytest.importorskip("transformers")
timm = import_timm()
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    tall = flower.transpose(Image.Transpose.TRANSPOSE).crop((0, 5, 427, 606))
    return [china, flower, china.crop((13, 0, 314, 427)), tall]


# -- transformers --------------------------------------------------------------------------------------------------
PROCESSORS = {  # name -> the PIL image processor (its model's defaults, or the hub's config for it)
    "vit": lambda: transformers.ViTImageProcessorPil(),  # 224x224 bilinear, mean = std = 0.5
    "clip": lambda: transformers.CLIPImageProcessorPil(),  # shortest edge 224 bicubic, crop 224, OpenAI's statistics
    "dinov2": lambda: transformers.BitImageProcessorPil(  # facebook/dinov2-*'s preprocessor_config.json
        size={"shortest_edge": 256}, crop_size=224, resample=3, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225]),
    "siglip": lambda: transformers.SiglipImageProcessorPil(),  # 224x224 bicubic, mean = std = 0.5
    "deit": lambda: transformers.DeiTImageProcessorPil(),  # 256x256 bicubic, crop 224
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_equals_transformers_image_processors(name, photos, tmp_path):
    processor = PROCESSORS[name]()
    processor.save_pretrained(tmp_path)
    transform = load_transform(tmp_path)
    assert transform.source == "transformers"
    for photo in photos:
        want = processor(images=photo, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = transform(photo)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(transform(np.asarray(photo)), got)  # a uint8 array is the same image


# -- timm ----------------------------------------------------------------------------------------------------------
def timm_eval_reference(image: Image.Image, data_config: dict) -> np.ndarray:
    """timm's transforms_imagenet_eval ('center' and 'squash'), with torchvision's Resize, CenterCrop (offsets
    int(round(d / 2))), ToTensor (/255) and Normalize, on PIL: the reference where torchvision cannot be imported."""
    _, height, width = data_config["input_size"]
    crop_pct = data_config["crop_pct"]
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    resample = resample[data_config["interpolation"]]
    if data_config["crop_mode"] == "squash":
        image = image.resize((scale_w, scale_h), resample)
    else:  # torchvision's Resize(int): the shortest edge, the other int(size * long / short)
        w, h = image.size
        size = (scale_h, int(scale_h * h / w)) if w <= h else (int(scale_h * w / h), scale_h)
        image = image.resize(size, resample)
    w, h = image.size
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    mean, std = (torch.tensor(data_config[k]).view(-1, 1, 1) for k in ("mean", "std"))
    return tensor.sub(mean).div(std).permute(1, 2, 0).numpy()


def timm_pixels(image: Image.Image, data_config: dict) -> np.ndarray:
    if importlib.util.find_spec("torchvision") is not None:  # timm's own transform
        return timm.data.create_transform(**data_config)(image).permute(1, 2, 0).numpy()
    return timm_eval_reference(image, data_config)


TIMM_ARCHS = ["vit_small_patch14_reg4_dinov2.lvd142m", "eva02_base_patch14_448.mim_in22k_ft_in22k_in1k",
              "vit_base_patch16_siglip_224.webli", "deit_tiny_patch16_224.fb_in1k", "vit_base_patch16_clip_224.openai"]


@needs_timm
@pytest.mark.parametrize("arch", TIMM_ARCHS + ["squash"])
def test_equals_timms_eval_transform(arch, photos, tmp_path):
    if arch == "squash":
        cfg = timm.models.get_pretrained_cfg(TIMM_ARCHS[3]).to_dict() | {"crop_mode": "squash", "crop_pct": 0.9}
    else:
        cfg = timm.models.get_pretrained_cfg(arch).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"architecture": arch.split(".")[0], "pretrained_cfg": cfg}))
    transform = load_transform(tmp_path)
    data_config = timm.data.resolve_data_config(pretrained_cfg=cfg)
    assert transform.source == "timm" and transform.mean == tuple(data_config["mean"])
    assert transform.crop == tuple(data_config["input_size"][1:]) and transform.resample == data_config["interpolation"]
    for photo in photos:
        want = timm_pixels(photo, data_config)
        got = transform(photo)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@needs_timm
def test_a_hub_name_gives_the_checkpoints_transform(photos, tmp_path, monkeypatch):
    from timm.models._hub import save_for_hf

    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, embed_dim=32, depth=1, num_heads=2,
                              img_size=28, patch_size=14)
    save_for_hf(model, tmp_path / "dir", safe_serialization=True)
    add_snapshot(tmp_path / "cache", "timm/tiny", tmp_path / "dir")
    use_cache(monkeypatch, tmp_path / "cache")
    transform = load_transform("hf-hub:timm/tiny")
    as_timm_loads_it = timm.create_model(f"local-dir:{tmp_path / 'dir'}", pretrained=True)
    want = timm_pixels(photos[0], timm.data.resolve_data_config(model=as_timm_loads_it))
    assert want.shape == (28, 28, 3)
    np.testing.assert_allclose(transform(photos[0]), want, rtol=0, atol=1e-5)


# -- the project's own checkpoints ---------------------------------------------------------------------------------
def test_a_config_gives_its_own_eval_transform(photos):
    config = vit_jax.get_config("Ti/16").replace(image_size=64)
    transform = load_transform(config)
    x = transform(photos[0])
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() < x.max() <= 1.0  # Google's (x - 0.5) / 0.5


def test_unsupported_settings_are_named():
    with pytest.raises(DataError, match="crop_mode 'border'"):
        timm_transform({"input_size": (3, 224, 224), "crop_mode": "border", "mean": (0.5,) * 3, "std": (0.5,) * 3})
    imagenet = {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(DataError, match="uint8"):
        timm_transform(imagenet)(np.zeros((8, 8, 3), np.float32))


@needs_timm
def test_predict_uses_the_checkpoints_transform(photos, tmp_path, capsys):
    from timm.models._hub import save_for_hf

    from vit_jax.predict import main as predict_main

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, embed_dim=32, depth=1, num_heads=2,
                              img_size=32, patch_size=16, num_classes=4).eval()
    with torch.no_grad():
        model.head.weight.mul_(50.0)  # probabilities far apart enough to tell a wrong preprocessing
    save_for_hf(model, tmp_path / "dir", safe_serialization=True)
    photos[0].save(tmp_path / "china.png")
    data_config = timm.data.resolve_data_config(model=timm.create_model(f"local-dir:{tmp_path / 'dir'}"))
    with torch.no_grad():
        x = torch.from_numpy(timm_pixels(photos[0], data_config)).permute(2, 0, 1)[None]
        want = torch.softmax(model(x), -1)[0].numpy()
    assert predict_main(["--checkpoint", str(tmp_path / "dir"), str(tmp_path / "china.png"), "--top-k", "4"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    got = {int(c): float(p) for c, p in (pair.split() for pair in line.split(": ", 1)[1].split(", "))}
    np.testing.assert_allclose([got[i] for i in range(4)], want, atol=2e-3)  # printed to 3 decimals


@needs_timm
def test_the_eval_loader_and_a_fine_tuned_runs_predict_use_the_init_checkpoints_transform(photos, tmp_path):
    from vit_jax.data.folder import load_folder_records
    from vit_jax.data.loader import make_loader
    from vit_jax.data.preprocess import init_transform, run_transform

    cfg = timm.models.get_pretrained_cfg("deit_tiny_patch16_224.fb_in1k").to_dict() | {"input_size": (3, 32, 32)}
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "config.json").write_text(json.dumps({"architecture": "deit_tiny", "pretrained_cfg": cfg}))
    for split in ("train", "val"):
        for label, photo in enumerate(photos[:2]):
            (tmp_path / "data" / split / f"class{label}").mkdir(parents=True)
            photo.save(tmp_path / "data" / split / f"class{label}" / "photo.png")
    _, eval_records, _, _ = load_folder_records(str(tmp_path / "data"), None, 0.0, 0, 3)
    model = vit_jax.get_config("Ti/16").replace(image_size=32)
    transform = init_transform(tmp_path / "init", model)
    assert transform is not None and transform.source == "timm"
    assert init_transform(tmp_path / "init", model.replace(image_size=48)) is None  # another resolution: the config's
    loader = make_loader(eval_records, batch_size=2, image_size=32, mean=model.pixel_mean, std=model.pixel_std,
                         train=False, eval_transform=transform)
    batch = next(iter(loader))
    loader.close()
    for image, label in zip(batch["image"], batch["label"]):
        np.testing.assert_allclose(image, timm_pixels(photos[int(label)], timm.data.resolve_data_config(
            pretrained_cfg=cfg)), rtol=0, atol=1e-5)
    run = {"model": model.to_dict(), "train": {"init": str(tmp_path / "init")}, "eval_crop_fraction": 0.875}
    assert run_transform(run) == transform  # predict on the run applies what its evaluation did
