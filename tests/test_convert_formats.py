"""Conversion between checkpoint formats: reading each format's own layout, bit-exact round trips,
architecture inference, resize/re-head on the way, and forward outputs against the source framework."""

from __future__ import annotations

import itertools
import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from checkpoint_writers import TorchvisionViT, hf_config, random_flax_params, randomize, write_google_npz
from conftest import nchw, random_images, rel_l2

import vit_jax
import vit_torch_ref
from parity.convert import convert
from vit_jax import ViTConfig, get_config
from vit_jax.formats.mapping import flatten, unflatten
from vit_jax.formats.read import read_flax_params, read_state_dict
from vit_jax.formats.torch_arrays import state_dict_to_numpy, to_numpy
from vit_jax.model import apply_with_intermediates

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # from_pretrained on local directories only

CONFIG = get_config("ViT-testing")  # 16 px, patch 4, hidden 32, 2 heads, 2 layers, 10 classes
# Destination name per format, as a user would write it.
TARGETS = {
    "google-npz": "w.npz",
    "flax-msgpack": "w.msgpack",
    "flax-orbax": "w_orbax",
    "torch": "w.safetensors",
    "torch-pt": "w.pt",
    "hf": "w_hf",
    "torchvision": "w_tv.pth",
}
TARGET_FORMAT = {"flax-msgpack": "flax", "flax-orbax": "flax", "torch-pt": "torch"}


def _fmt(kind: str) -> str:
    return TARGET_FORMAT.get(kind, kind)


def flax_logits(config: ViTConfig, params, images: np.ndarray) -> np.ndarray:
    return np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images))


@pytest.fixture(scope="module")
def source_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "ViT-testing.npz"
    flat = random_flax_params(CONFIG)
    write_google_npz(path, flat)
    return path, flat


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key].view(np.uint8), b[key].view(np.uint8)), f"{key} differs"


# -- every format is read and written; every pair round-trips bit-exactly ---------------
@pytest.mark.parametrize("kind", list(TARGETS))
def test_npz_to_format_keeps_every_tensor(tmp_path, source_npz, kind):
    src, flat = source_npz
    dst = tmp_path / TARGETS[kind]
    result = convert(src, dst, to_format=_fmt(kind))
    assert result.target_format == _fmt(kind)
    config, params = read_flax_params(dst)
    assert_same_tensors(flat, {k: np.asarray(v) for k, v in flatten(params).items()})
    # The numerics of the Google source travel in the config JSON beside the output.
    written = ViTConfig.from_json(result.config_path)
    assert (written.gelu, written.layer_norm_eps) == ("tanh", 1e-6)
    assert config == written


@pytest.mark.parametrize("a, b", list(itertools.permutations(["google-npz", "flax-msgpack", "flax-orbax", "torch",
                                                               "hf", "torchvision"], 2)))
def test_round_trip_is_bit_exact(tmp_path, source_npz, a, b):
    src, _ = source_npz
    first = tmp_path / ("a_" + TARGETS[a])
    convert(src, first, to_format=_fmt(a))
    middle = tmp_path / ("b_" + TARGETS[b])
    back = tmp_path / ("c_" + TARGETS[a])
    convert(first, middle, to_format=_fmt(b))
    convert(middle, back, to_format=_fmt(a))
    _, before = read_flax_params(first)
    _, after = read_flax_params(back)
    assert_same_tensors(flatten(before), flatten(after))
    # And in each format's own naming, as stored on disk.
    from vit_jax.formats.read import open_checkpoint

    _, s1 = open_checkpoint(first)
    _, s2 = open_checkpoint(back)
    assert sorted(s1.names.values()) == sorted(s2.names.values())


@pytest.mark.parametrize("kind", ["torch", "flax-msgpack", "flax-orbax", "hf", "torchvision"])
def test_bfloat16_npz_stored_as_void_round_trips(tmp_path, kind):
    flat = random_flax_params(CONFIG, dtype=ml_dtypes.bfloat16)
    write_google_npz(tmp_path / "bf16.npz", flat)
    assert np.load(tmp_path / "bf16.npz")["cls"].dtype.kind == "V"  # how NumPy stores it without ml_dtypes
    middle = tmp_path / ("m_" + TARGETS[kind])
    convert(tmp_path / "bf16.npz", middle, to_format=_fmt(kind))
    config, state = read_state_dict(middle)
    assert state["cls_token"].dtype == ml_dtypes.bfloat16
    convert(middle, tmp_path / "back.npz")
    _, params = read_flax_params(tmp_path / "back.npz")
    assert_same_tensors(flat, flatten(params))


# -- Google layouts -------------------------------------------------------------------
@pytest.mark.parametrize("pre_linen, wrapper", [(True, ""), (False, "opt/target/"), (True, "opt/target/"),
                                                (False, "params/")])
def test_google_npz_layout_variants(tmp_path, pre_linen, wrapper):
    flat = random_flax_params(CONFIG)
    optimizer_state = {"opt/state/step": np.array(7)} if wrapper == "opt/target/" else {}
    write_google_npz(tmp_path / "g.npz", flat, pre_linen=pre_linen, wrapper=wrapper, extra=optimizer_state)
    if pre_linen:
        assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in "".join(np.load(tmp_path / "g.npz").files)
    config, params = vit_jax.load_pretrained(tmp_path / "g.npz")
    assert_same_tensors(flat, flatten(params))
    assert config.num_heads == 2 and config.num_classes == 10 and config.gelu == "tanh"


def test_scanned_flax_msgpack_and_orbax_manager_layout(tmp_path):
    import orbax.checkpoint as ocp
    from flax import serialization

    flat = random_flax_params(CONFIG)
    scanned = vit_jax.stack_block_params(unflatten(flat), CONFIG.num_layers)
    (tmp_path / "scanned.msgpack").write_bytes(serialization.msgpack_serialize({"params": scanned}))
    _, params = vit_jax.load_pretrained(tmp_path / "scanned.msgpack")
    assert_same_tensors(flat, flatten(params))
    # Asking for a scanned config gives the stacked layout back.
    config, stacked = vit_jax.load_pretrained(tmp_path / "scanned.msgpack", config=CONFIG.replace(scan=True))
    assert config.scan and "encoderblock" in stacked["Transformer"]

    manager = ocp.CheckpointManager((tmp_path / "run").absolute())
    for step in (1, 5):
        tree = {"params": unflatten({k: v + step for k, v in flat.items()})}
        manager.save(step, args=ocp.args.StandardSave(tree))
    manager.wait_until_finished()
    _, params = vit_jax.load_pretrained(tmp_path / "run")
    assert_same_tensors({k: v + 5 for k, v in flat.items()}, flatten(params))


# -- inference of the architecture ---------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(classifier="gap"),
    dict(representation_size=24, num_classes=7),
    dict(num_classes=0),
    dict(qkv_bias=False, image_size=(16, 8), patch_size=(4, 2)),
    dict(num_heads=4, num_layers=3, mlp_dim=48),
])
def test_architecture_is_inferred_from_the_tensors(tmp_path, overrides):
    config = CONFIG.replace(**overrides)
    flat = random_flax_params(config)
    write_google_npz(tmp_path / "x.npz", flat)
    wanted = {k: getattr(config, k) for k in ("patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers",
                                               "classifier", "representation_size", "num_classes", "qkv_bias")}
    if isinstance(config.image_size, int):  # a non-square grid needs a config; covered below
        found, _ = vit_jax.load_pretrained(tmp_path / "x.npz")
        assert {k: getattr(found, k) for k in wanted} == wanted
        assert found.image_size == config.image_size
    else:
        full = tmp_path / "full.json"
        full.write_text(config.to_json())
        found, _ = vit_jax.load_pretrained(tmp_path / "x.npz", config=str(full))
        assert found.image_size == config.image_size
    # Through a fused-qkv format the heads come from the config JSON written beside the file.
    if config.classifier == "token" and config.num_classes and config.representation_size is None \
            and isinstance(config.image_size, int):
        convert(tmp_path / "x.npz", tmp_path / "x.safetensors", config=None)
        again, _ = read_state_dict(tmp_path / "x.safetensors")
        assert again.num_heads == config.num_heads


def test_timm_heads_come_from_preset_or_standard_width(tmp_path):
    import safetensors.torch

    config = get_config("ViT-Ti_16", image_size=32, num_classes=3)
    model = randomize(vit_torch_ref.VisionTransformer(config))
    safetensors.torch.save_file(model.state_dict(), tmp_path / "ti.safetensors")
    found, _ = read_state_dict(tmp_path / "ti.safetensors")  # hidden 192 -> 3 heads, the standard Ti
    assert (found.num_heads, found.gelu, found.layer_norm_eps) == (3, "exact", 1e-6)
    with_preset, _ = read_state_dict(tmp_path / "ti.safetensors", config="Ti/16")
    # A preset fills the heads only: timm's numerics stay (the preset's own gelu is Google's tanh).
    assert (with_preset.num_heads, with_preset.image_size, with_preset.gelu) == (3, 32, "exact")


# -- resize and re-head on the way ------------------------------------------------------
def test_image_size_resizes_posemb_like_vit_jax(tmp_path, source_npz):
    src, flat = source_npz
    convert(src, tmp_path / "big.safetensors", image_size=24, num_classes=5)
    config, state = read_state_dict(tmp_path / "big.safetensors")
    assert (config.image_size, config.num_classes, config.seq_len) == (24, 5, 37)
    expected = vit_jax.resize_params(unflatten(flat), CONFIG, 24)
    np.testing.assert_array_equal(state["pos_embed"], expected["Transformer"]["posembed_input"]["pos_embedding"])
    np.testing.assert_array_equal(state["cls_token"], flat["cls"])  # untouched
    assert not state["head.weight"].any() and not state["head.bias"].any()
    assert state["head.weight"].shape == (5, 32)
    np.testing.assert_array_equal(state["blocks.1.mlp.fc2.weight"],
                                  flat["Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel"].T)
    # The result runs at the new size in both frameworks and they agree.
    _, model = vit_torch_ref.load_pretrained(tmp_path / "big.safetensors")
    images = random_images(config)
    _, params = vit_jax.load_pretrained(tmp_path / "big.safetensors")
    with torch.no_grad():
        out = model(nchw(images), return_intermediates=True)[1]["pre_logits"].numpy()
    ref = apply_with_intermediates(vit_jax.VisionTransformer(config), {"params": params}, images)[1]
    assert rel_l2(out, ref["pre_logits"]) < 1e-5


def test_num_classes_zero_drops_the_head(tmp_path, source_npz):
    src, flat = source_npz
    config, params = vit_jax.load_pretrained(src, num_classes=0)
    assert config.num_classes == 0 and "head" not in params
    assert_same_tensors({k: v for k, v in flat.items() if not k.startswith("head/")}, flatten(params))


# -- forward outputs against the source framework ----------------------------------------
def test_google_npz_to_timm_safetensors_runs_the_same_function(tmp_path, source_npz):
    src, flat = source_npz
    convert(src, tmp_path / "m.safetensors")
    config, model = vit_torch_ref.load_pretrained(tmp_path / "m.safetensors")
    assert config.gelu == "tanh"  # Google's numerics, from the config JSON beside the file
    images = random_images(config, batch=3)
    with torch.no_grad():
        torch_out = model(nchw(images)).numpy()
    assert rel_l2(torch_out, flax_logits(CONFIG, unflatten(flat), images)) < 1e-5


def test_timm_state_dict_to_flax_runs_the_same_function(tmp_path):
    config = CONFIG.replace(gelu="exact")
    model = randomize(vit_torch_ref.VisionTransformer(config), seed=3)
    torch.save(model.state_dict(), tmp_path / "timm.pth")
    convert(tmp_path / "timm.pth", tmp_path / "timm.npz", config="ViT-testing")
    found, params = vit_jax.load_pretrained(tmp_path / "timm.npz")
    assert (found.gelu, found.layer_norm_eps) == ("exact", 1e-6)  # timm's numerics carried over
    images = random_images(found, batch=3)
    with torch.no_grad():
        ref = model(nchw(images)).numpy()
    assert rel_l2(flax_logits(found, params, images), ref) < 1e-5


@pytest.mark.parametrize("how", ["save_pretrained", "state_dict_file"])
def test_hugging_face_checkpoint_runs_the_same_function(tmp_path, how):
    from transformers import ViTForImageClassification

    hf = randomize(ViTForImageClassification(hf_config(CONFIG)), seed=1)
    if how == "save_pretrained":
        hf.save_pretrained(tmp_path / "hf")
        src = tmp_path / "hf"
    else:  # a bare state dict in transformers' own (v5) module naming; numerics are HF's defaults
        import safetensors.torch

        safetensors.torch.save_file(hf.state_dict(), tmp_path / "hf.safetensors")
        src = tmp_path / "hf.safetensors"
    config, params = vit_jax.load_pretrained(src, config="ViT-testing")
    assert (config.gelu, config.layer_norm_eps) == ("exact", 1e-12)
    images = random_images(config, batch=3)
    with torch.no_grad():
        ref = hf(pixel_values=nchw(images)).logits.numpy()
    assert rel_l2(flax_logits(config, params, images), ref) < 1e-5


def test_our_weights_load_into_hugging_face(tmp_path, source_npz):
    from transformers import ViTForImageClassification, ViTModel

    src, flat = source_npz
    convert(src, tmp_path / "hf_dir", to_format="hf")
    hf = ViTForImageClassification.from_pretrained(tmp_path / "hf_dir").eval()
    assert hf.config.hidden_act == "gelu_pytorch_tanh"  # the Google source's tanh GELU, so the function is kept
    images = random_images(CONFIG, batch=3)
    with torch.no_grad():
        out = hf(pixel_values=nchw(images)).logits.numpy()
    assert rel_l2(out, flax_logits(CONFIG, unflatten(flat), images)) < 1e-5
    # A features-only model with pre-logits becomes ViTModel with its pooler.
    config = CONFIG.replace(num_classes=0, representation_size=32)
    flat = random_flax_params(config)
    write_google_npz(tmp_path / "features.npz", flat)
    convert(tmp_path / "features.npz", tmp_path / "features_hf", to_format="hf")
    model = ViTModel.from_pretrained(tmp_path / "features_hf").eval()
    with torch.no_grad():
        pooled = model(pixel_values=nchw(images)).pooler_output.numpy()
    assert rel_l2(pooled, flax_logits(config, unflatten(flat), images)) < 1e-5


def test_torchvision_checkpoint_runs_the_same_function(tmp_path):
    config = CONFIG.replace(representation_size=24)
    tv = randomize(TorchvisionViT(config), seed=2)
    torch.save(tv.state_dict(), tmp_path / "vit_tv.pth")
    found, params = vit_jax.load_pretrained(tmp_path / "vit_tv.pth", config="ViT-testing")
    assert found.gelu == "exact" and found.pixel_mean == (0.485, 0.456, 0.406)
    images = random_images(found, batch=3)
    with torch.no_grad():
        ref = tv(nchw(images)).numpy()
    assert rel_l2(flax_logits(found, params, images), ref) < 1e-5
    # And back: our conversion loads into torchvision's module tree with strict=True.
    convert(tmp_path / "vit_tv.pth", tmp_path / "again.pth", to_format="torchvision", config="ViT-testing")
    again = TorchvisionViT(config)
    again.load_state_dict(torch.load(tmp_path / "again.pth", weights_only=True), strict=True)
    assert_same_tensors(state_dict_to_numpy(tv.state_dict()), state_dict_to_numpy(again.state_dict()))


def test_hf_config_json_numerics_are_read(tmp_path):
    from transformers import ViTForImageClassification

    hf = randomize(ViTForImageClassification(hf_config(CONFIG, layer_norm_eps=1e-5,
                                                          hidden_act="gelu_pytorch_tanh")))
    hf.save_pretrained(tmp_path / "hf")
    config, _ = read_state_dict(tmp_path / "hf")  # heads from config.json, no --config needed
    assert (config.gelu, config.layer_norm_eps, config.num_heads) == ("tanh", 1e-5, 2)
    result = convert(tmp_path / "hf", tmp_path / "out.npz")
    assert json.loads(result.config_path.read_text())["layer_norm_eps"] == 1e-5


def test_load_pretrained_in_both_frameworks_agree(tmp_path, source_npz):
    src, _ = source_npz
    config, params = vit_jax.load_pretrained(src, image_size=20)
    tconfig, model = vit_torch_ref.load_pretrained(src, image_size=20)
    assert config == tconfig and not model.training
    images = random_images(config)
    with torch.no_grad():
        out = model(nchw(images)).numpy()
    assert rel_l2(out, flax_logits(config, params, images)) < 1e-5
    assert to_numpy(model.pos_embed).shape == (1, 26, 32)
    assert isinstance(jax.tree.leaves(params)[0], np.ndarray)


def test_msgpack_without_flax_is_byte_for_byte_flax_serialization(tmp_path, monkeypatch):
    """vit_jax.formats writes and reads Flax msgpack with msgpack + NumPy: the same bytes as flax, chunking included."""
    import ml_dtypes
    from flax import serialization

    from vit_jax.formats import flax_ckpt

    # Small chunk limits on both sides, so the 48-byte kernel is split as flax splits arrays over 1 GiB.
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 16)
    monkeypatch.setattr(flax_ckpt, "MAX_CHUNK_BYTES", 16)
    # (keys in sorted order: flax's tree_map sorts them, this writer keeps the order it is given)
    tree = {"cls": np.zeros((1, 1, 2), np.float16),
            "embedding": {"bias": np.asarray([1.5, -2.0], ml_dtypes.bfloat16),
                          "kernel": np.arange(12, dtype=np.float32).reshape(3, 4)}}
    path = tmp_path / "tree.msgpack"
    flax_ckpt.write(path, flatten(tree))
    assert path.read_bytes() == serialization.msgpack_serialize(tree)
    restored = flax_ckpt.msgpack_restore(serialization.msgpack_serialize(tree))
    for key, value in flatten(tree).items():
        got = flatten(restored)[key]
        assert got.dtype == value.dtype and np.array_equal(got, value)
