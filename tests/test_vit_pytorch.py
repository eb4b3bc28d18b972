"""lucidrains' vit-pytorch, in and out: the real `vit_pytorch.ViT` against the Flax model and the twin.

In: a randomised vit_pytorch.ViT saved as .pt / .safetensors loads through both
loaders and computes its logits (every token with num_classes=0) within 1e-5
relative. Out: a Flax model converted with `python -m parity convert --to
vit-pytorch` loads into vit_pytorch.ViT(**the printed kwargs) with strict=True and
computes the Flax logits. Skipped where vit-pytorch is not installed.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from checkpoint_writers import random_flax_params, randomize
from conftest import apply, nchw, random_images
from flax import serialization

import vit_jax
import vit_torch_ref
from parity.convert_cli import main as convert_main
from vit_jax.config import ViTConfig
from vit_jax.formats import config_sidecar
from vit_jax.formats.mapping import unflatten
from vit_jax.formats.vit_pytorch import vit_kwargs


def _vit_pytorch_vit():
    """vit_pytorch.vit, the package's own module. The package's __init__ also imports its
    torchvision-based models, and torchvision cannot be imported here (a CUDA-only wheel)."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None:
        return None
    if importlib.util.find_spec("torchvision") is not None:
        import vit_pytorch.vit

        return vit_pytorch.vit
    location = importlib.util.spec_from_file_location("vit_pytorch_vit", f"{spec.submodule_search_locations[0]}/vit.py")
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    return module


vp = _vit_pytorch_vit()
pytestmark = pytest.mark.skipif(vp is None, reason="vit-pytorch is not installed (pip install vit-pytorch)")

BASE = dict(image_size=16, patch_size=4, num_classes=7, dim=32, depth=2, heads=2, mlp_dim=48)
# name -> (vit_pytorch.ViT kwargs, what --set must state: what the tensors do not show)
VARIANTS = {
    "cls": ({}, {}),  # dim_head=64 (the package default): heads = q/k/v width / 64, not stated
    "mean": ({"pool": "mean", "dim_head": 16}, {"num_heads": 2}),
    "dim_head": ({"heads": 3, "dim_head": 12}, {"num_heads": 3}),  # inner 36 != dim 32
    "identity_out": ({"heads": 1, "dim_head": 32}, {"num_heads": 1}),  # to_out is nn.Identity
    "non_square": ({"image_size": (16, 12), "patch_size": (4, 2), "dim_head": 16},
                   {"num_heads": 2, "image_size": [16, 12], "patch_size": [4, 2]}),
    "one_channel": ({"channels": 1, "dim_head": 16}, {"num_heads": 2}),
    "no_head_cls": ({"num_classes": 0, "dim_head": 16}, {"num_heads": 2}),
    "no_head_mean": ({"num_classes": 0, "pool": "mean", "dim_head": 16}, {"num_heads": 2}),
}


def _kwargs(name: str) -> dict:
    return {**BASE, **VARIANTS[name][0]}


def _config(kwargs: dict) -> ViTConfig:
    """The ViTConfig of vit_pytorch.ViT(**kwargs), written out by hand."""
    heads, dim, dim_head = kwargs["heads"], kwargs["dim"], kwargs.get("dim_head", 64)
    pool, classes = kwargs.get("pool", "cls"), kwargs["num_classes"]
    channels = kwargs.get("channels", 3)
    return ViTConfig(
        image_size=kwargs["image_size"], patch_size=kwargs["patch_size"], num_channels=channels,
        num_classes=classes, hidden_size=dim, mlp_dim=kwargs["mlp_dim"], num_heads=heads,
        num_layers=kwargs["depth"], classifier=("token" if pool == "cls" else "gap") if classes else
        ("token_unpooled" if pool == "cls" else "unpooled"), gelu="exact", layer_norm_eps=1e-5, qkv_bias=False,
        patch_norm=True, attention_head_dim=None if heads * dim_head == dim else dim_head,
        attention_out_proj=not (heads == 1 and dim_head == dim), pixel_mean=(0.5,) * channels,
        pixel_std=(0.5,) * channels,
    )


def _relative_error(got, want) -> float:
    """max |got - want| / max |want|, in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_vit_pytorch_model_loads_into_jax_and_the_twin(tmp_path, name):
    kwargs, overrides = _kwargs(name), VARIANTS[name][1]
    model = randomize(vp.ViT(**kwargs), seed=1)
    path = tmp_path / ("m.safetensors" if name in ("mean", "non_square") else "m.pt")
    if path.suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    expected_config = _config(kwargs)
    images = random_images(expected_config, seed=2)
    with torch.no_grad():
        want = model(nchw(images)).numpy()

    config, params = vit_jax.load_pretrained(path, format="vit-pytorch", overrides=overrides)
    assert config.function_dict() == expected_config.function_dict()
    assert _relative_error(apply(config, params, images), want) < 1e-5
    _, twin = vit_torch_ref.load_pretrained(path, format="vit-pytorch", overrides=overrides)
    with torch.no_grad():
        assert _relative_error(twin(nchw(images)).numpy(), want) < 1e-5


@pytest.mark.parametrize("name", list(VARIANTS))
def test_flax_model_converts_to_a_state_dict_vit_pytorch_loads_strictly(tmp_path, name, capsys):
    kwargs = _kwargs(name)
    config = _config(kwargs)
    assert vit_kwargs(config) == {**kwargs, "channels": config.num_channels, "pool": kwargs.get("pool", "cls"),
                                  "dim_head": config.head_dim}
    params = unflatten(random_flax_params(config, seed=3))
    src = tmp_path / "flax.msgpack"
    src.write_bytes(serialization.msgpack_serialize({"params": params}))
    config_sidecar(src).write_text(config.to_json())
    dst = tmp_path / "out.pt"
    assert convert_main([str(src), str(dst), "--to", "vit-pytorch"]) == 0
    printed = capsys.readouterr().out
    assert f"vit_pytorch.ViT({', '.join(f'{k}={v!r}' for k, v in vit_kwargs(config).items())})" in printed

    model = vp.ViT(**kwargs)
    model.load_state_dict(torch.load(dst, weights_only=True), strict=True)
    images = random_images(config, seed=4)
    with torch.no_grad():
        got = model.eval()(nchw(images)).numpy()
    assert _relative_error(got, apply(config, params, images)) < 1e-5


def test_round_trip_through_flax_is_bit_exact_and_the_cli_takes_set(tmp_path, capsys):
    kwargs = _kwargs("dim_head")
    model = randomize(vp.ViT(**kwargs), seed=5)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert convert_main([str(tmp_path / "m.pt"), str(tmp_path / "m.msgpack"), "--set", "num_heads=3"]) == 0
    assert "vit-pytorch -> flax" in capsys.readouterr().out
    assert convert_main([str(tmp_path / "m.msgpack"), str(tmp_path / "back.pt"), "--to", "vit-pytorch", "-q"]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    original = model.state_dict()
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key


def test_heads_default_to_the_package_head_width_with_a_note(tmp_path, capsys):
    torch.save(vp.ViT(**_kwargs("cls")).state_dict(), tmp_path / "m.pt")
    assert convert_main([str(tmp_path / "m.pt"), str(tmp_path / "m.msgpack")]) == 0
    err = capsys.readouterr().err
    assert "num_heads=2 assumed from q/k/v width 128" in err and "--set num_heads=N" in err
    config = ViTConfig.from_json(str(config_sidecar(tmp_path / "m.msgpack")))
    assert (config.num_heads, config.head_dim) == (2, 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "num_heads=5"], "num_heads=5 does not divide the q/k/v width 36"),
        (["--set", "num_hedas=3"], "unknown config field(s): 'num_hedas' (did you mean 'num_heads'?)"),
        (["--set", "num_heads"], "--set expects FIELD=VALUE"),
        (["--set", "num_heads=3", "--set", "hidden_size=64"], "says hidden_size=64"),
    ],
)
def test_bad_set_exits_2_with_one_line(tmp_path, capsys, args, message):
    torch.save(vp.ViT(**_kwargs("dim_head")).state_dict(), tmp_path / "m.pt")
    assert convert_main([str(tmp_path / "m.pt"), str(tmp_path / "m.msgpack"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.msgpack").exists()


def test_a_google_vit_is_refused_by_the_vit_pytorch_writer(tmp_path, capsys):
    config = vit_jax.get_config("ViT-testing")
    src = tmp_path / "g.msgpack"
    src.write_bytes(serialization.msgpack_serialize({"params": unflatten(random_flax_params(config))}))
    assert convert_main([str(src), str(tmp_path / "g.pt"), "--to", "vit-pytorch"]) == 2
    err = capsys.readouterr().err
    assert "vit-pytorch's ViT cannot express this model: patch_norm=False" in err
    assert "qkv_bias=True" in err and "gelu 'tanh'" in err
    assert not (tmp_path / "g.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dim_head", "identity_out"])
def test_parity_report_on_a_converted_vit_pytorch_model_passes(tmp_path, name):
    from parity_report_helpers import check_passing_report

    from parity.report_cli import main as report_main

    torch.save(randomize(vp.ViT(**_kwargs(name)), seed=6).state_dict(), tmp_path / "m.pt")
    assert convert_main([str(tmp_path / "m.pt"), str(tmp_path / "m.msgpack"), *_sets(VARIANTS[name][1]), "-q"]) == 0
    out = tmp_path / "report"
    assert report_main(["--checkpoint", str(tmp_path / "m.msgpack"), "--backward", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    config = ViTConfig.from_json(str(config_sidecar(tmp_path / "m.msgpack")))
    check_passing_report(report, config, backward=True)


@pytest.mark.parametrize("target", ["hf", "torchvision"])
def test_google_layout_targets_refuse_the_vit_pytorch_options(tmp_path, capsys, target):
    kwargs = _kwargs("identity_out")
    torch.save(vp.ViT(**kwargs).state_dict(), tmp_path / "m.pt")
    assert convert_main([str(tmp_path / "m.pt"), str(tmp_path / "m.bin"), "--to", target, "--set", "num_heads=1"]) == 2
    err = capsys.readouterr().err
    assert "patch_norm" in err and "attention_out_proj=False" in err and "Traceback" not in err
    assert not (tmp_path / "m.bin").exists()


def test_a_non_square_grid_says_how_to_state_the_size_and_image_size_settles_it(tmp_path, capsys):
    model = randomize(vp.ViT(**{**BASE, "image_size": (8, 12), "dim_head": 16}), seed=3)  # a 2 x 3 grid
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = [str(tmp_path / "m.pt"), str(tmp_path / "out.msgpack"), "-q", "--set", "num_heads=2"]
    assert convert_main(args) == 2
    err = capsys.readouterr().err
    assert "holds 6 patch positions, not a square grid; state the source's image size: --set image_size=[H,W] " \
           "(or --image-size HxW to convert at that size, or --config x.json)" in err, err
    assert convert_main(args + ["--image-size", "8x12"]) == 0
    config, params = vit_jax.load_pretrained(tmp_path / "out.msgpack")
    assert config.image_size == (8, 12)
    posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_array_equal(posemb, model.pos_embedding.detach().numpy().reshape(posemb.shape))  # not resized
