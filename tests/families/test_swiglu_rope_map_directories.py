"""SigLIP (MAP head), DINOv2-giant (packed SwiGLU) and EVA-02 (rotary embedding, SwiGLU + sub-LN, q/v biases).

Real timm 1.0.31 models at tiny widths with every weight perturbed away from its init, saved as timm hub
directories (config.json + model.safetensors): `convert DIR out.msgpack` with no other flag; the Flax model
and the PyTorch twin match timm within 1e-5 relative L2 (float32); the way back is bit-exact and timm
loads it strict. transformers 5.24's DINOv2 with use_swiglu_ffn (DINOv2-g's HF layout) likewise, from and back
to its save_pretrained directory.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import nchw, rel_l2
from family_helpers import check_in, perturb, same_state
from torchvision_stub import import_timm

import vit_jax
from parity.convert import convert
from vit_jax.formats.mapping import flatten
from vit_jax.formats.read import read_state_dict
from vit_torch_ref import VisionTransformer as Twin

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")


def _transformers_major() -> int:
    try:
        import transformers
    except ImportError:
        return 0
    return int(transformers.__version__.split(".")[0])


# transformers 5 splits Dinov2SwiGLUFFN into gate_proj, up_proj and down_proj; 4.x keeps weights_in, weights_out
needs_transformers_5 = pytest.mark.skipif(_transformers_major() < 5, reason="transformers 5's DINOv2 module names")

TINY = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, num_classes=0)
# id -> (architecture, model_args beyond TINY): what the hub's config.json says
FAMILIES = {
    "siglip": ("vit_base_patch16_siglip_224", dict(mlp_ratio=1.25)),
    "siglip-tanh": ("vit_so400m_patch16_siglip_256", dict(mlp_ratio=1.25, num_classes=3)),
    "dinov2-giant": ("vit_giant_patch14_dinov2", dict(mlp_ratio=2.5, init_values=1.0)),
    "eva02-packed": ("eva02_tiny_patch14_224", dict(ref_feat_shape=[5, 5])),
    # eva02_base/large: separate q/k/v projections (q_proj, k_proj without bias, v_proj), SwiGLU with sub-LN
    "eva02-sub-ln": ("eva02_base_patch14_224", dict(ref_feat_shape=[4, 4], num_classes=3)),
    "eva02-layer-scale": ("eva02_large_patch14_224", dict(init_values=0.5, ref_feat_shape=[4, 4])),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def hub(request, tmp_path_factory):
    arch, extra = FAMILIES[request.param]
    args = {**TINY, **extra}
    model = perturb(timm.create_model(arch, pretrained=False, **args), seed=len(request.param))
    path = tmp_path_factory.mktemp(request.param) / "hub"
    path.mkdir()
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": args["num_classes"],
                                                  "model_args": args}))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(nchw(images)).numpy()
    return arch, args, model, path, images, want


def test_timm_hub_to_flax_and_twin_within_float32_rounding(hub, tmp_path):
    arch, args, model, path, images, want = hub
    convert(path, tmp_path / "out.msgpack")  # no other flag: the architecture and the tensors decide
    config, params = vit_jax.load_pretrained(tmp_path / "out.msgpack")
    assert rel_l2(np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images)), want) < 1e-5
    config_t, state = read_state_dict(path)
    twin = Twin(config_t).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        assert rel_l2(twin(nchw(images)).numpy(), want) < 1e-5


def test_back_to_a_timm_hub_dir_is_bit_exact_and_loads_strict(hub, tmp_path):
    arch, args, model, path, images, want = hub
    convert(path, tmp_path / "out.msgpack")
    convert(tmp_path / "out.msgpack", tmp_path / "back", to_format="timm-hub")
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert written["architecture"] == arch
    back = timm.create_model(written["architecture"], pretrained=False, **written["model_args"]).eval()
    tensors = safetensors.torch.load_file(tmp_path / "back" / "model.safetensors")
    back.load_state_dict(tensors, strict=True)
    original = model.state_dict()
    assert sorted(tensors) == sorted(original)
    for key, value in tensors.items():
        assert torch.equal(value, original[key]), key
    with torch.no_grad():
        assert np.array_equal(back(nchw(images)).numpy(), want)


@pytest.fixture(scope="module")
def siglip_hf(tmp_path_factory):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hf_config = SiglipVisionConfig(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                                   image_size=28, patch_size=7)
    model = perturb(SiglipVisionModel(hf_config), seed=3)
    path = tmp_path_factory.mktemp("siglip_hf") / "hf"
    model.save_pretrained(path)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(pixel_values=nchw(images)).pooler_output.numpy()
    return model, path, images, want


def test_transformers_siglip_vision_model_in_and_back(siglip_hf, tmp_path):
    from transformers import SiglipVisionModel

    model, path, images, want = siglip_hf
    convert(path, tmp_path / "out.msgpack")
    config, params = vit_jax.load_pretrained(tmp_path / "out.msgpack")
    assert (config.classifier, config.gelu) == ("map", "tanh")
    assert rel_l2(np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images)), want) < 1e-5
    _, state = read_state_dict(path)
    twin = Twin(config).eval()
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        assert rel_l2(twin(nchw(images)).numpy(), want) < 1e-5

    convert(tmp_path / "out.msgpack", tmp_path / "back", to_format="hf")
    back, info = SiglipVisionModel.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    written = {key.removeprefix("vision_model."): value  # transformers 4.x's names, which 5.x loads
               for key, value in safetensors.torch.load_file(tmp_path / "back" / "model.safetensors").items()}
    original = {key.removeprefix("vision_model."): value for key, value in model.state_dict().items()}
    assert sorted(written) == sorted(original)
    for key, value in written.items():
        assert torch.equal(value, original[key]), key


def big_vision_siglip(path, scanned: bool) -> tuple:
    """A big_vision SigLIP .npz (image tower under params/img/, pos_embedding at its top, MAPHead_0, the text
    tower and logit scale beside it), written here in that layout from a tiny model's weights: (config, params)."""
    config = vit_jax.get_config("SigLIP-B_16").replace(image_size=28, patch_size=7, hidden_size=32, mlp_dim=40,
                                                       num_heads=2, num_layers=2)
    params = jax.tree.map(lambda a: a + 0.2 * np.random.default_rng(4).standard_normal(a.shape).astype(a.dtype),
                          vit_jax.init_params(config, 2))
    flat = {k.replace("Transformer/posembed_input/pos_embedding", "pos_embedding"): np.asarray(v)
            for k, v in flatten(params).items()}
    if scanned:
        blocks = sorted({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
        for rest in sorted({k.split("/", 2)[2] for k in flat if k.startswith("Transformer/encoderblock_0/")}):
            flat[f"Transformer/encoderblock/{rest}"] = np.stack([flat.pop(f"Transformer/{b}/{rest}") for b in blocks])
    arrays = {f"params/img/{k}": v for k, v in flat.items()}
    arrays.update({"params/txt/Embed_0/embedding": np.ones((7, 32), np.float32), "params/t": np.ones(1, np.float32),
                   "params/b": np.zeros(1, np.float32)})
    np.savez(path, **arrays)
    return config, params


@pytest.mark.parametrize("scanned", [False, True], ids=["per-block", "scanned"])
def test_big_vision_siglip_npz_converts_with_no_flag(tmp_path, scanned):
    from transformers import SiglipVisionModel

    config, params = big_vision_siglip(tmp_path / "siglip.npz", scanned)
    images = np.random.default_rng(2).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    want = np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images))

    convert(tmp_path / "siglip.npz", tmp_path / "out.msgpack")
    got_config, got = vit_jax.load_pretrained(tmp_path / "out.msgpack")
    assert (got_config.classifier, got_config.gelu, got_config.num_classes) == ("map", "tanh", 0)
    assert np.array_equal(np.asarray(vit_jax.VisionTransformer(got_config).apply({"params": got}, images)), want)
    convert(tmp_path / "siglip.npz", tmp_path / "hf", to_format="hf")  # and into transformers' SigLIP
    model = SiglipVisionModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert rel_l2(model(pixel_values=nchw(images)).pooler_output.numpy(), want) < 1e-5


@pytest.mark.parametrize("scanned", [False, True], ids=["per-block", "scanned"])
def test_big_vision_siglip_npz_written_back_in_its_names(tmp_path, capsys, scanned):
    """`convert x.msgpack y.npz --to big-vision`: the image tower under params/img/ with big_vision's names
    (pos_embedding at its top, MAPHead_0), the same bytes as the source file's tower; read back with no
    flag (and without the config JSON beside it) to the same tensors."""
    from convert_cli_helpers import run_cli

    big_vision_siglip(tmp_path / "siglip.npz", scanned)
    convert(tmp_path / "siglip.npz", tmp_path / "x.msgpack")
    code, err = run_cli([tmp_path / "x.msgpack", tmp_path / "bv.npz", "--to", "big-vision"], capsys)
    assert code == 0, err
    written = dict(np.load(tmp_path / "bv.npz"))
    source = dict(np.load(tmp_path / "siglip.npz"))
    if scanned:  # big_vision loads per-block trees too (its scan=False layout)
        for key in [k for k in source if "/encoderblock/" in k]:
            stacked = source.pop(key)
            source.update({key.replace("/encoderblock/", f"/encoderblock_{i}/"): a for i, a in enumerate(stacked)})
    tower = {k: v for k, v in source.items() if k.startswith("params/img/")}
    assert sorted(written) == sorted(tower) and "params/img/MAPHead_0/probe" in written
    assert all(np.array_equal(written[k], v) and written[k].dtype == v.dtype for k, v in tower.items())

    (tmp_path / "bv.npz.json").unlink()  # the file alone, as big_vision's own
    convert(tmp_path / "bv.npz", tmp_path / "back.msgpack")
    (config, got), (_, want) = vit_jax.load_pretrained(tmp_path / "back.msgpack"), vit_jax.load_pretrained(
        tmp_path / "x.msgpack")
    assert (config.classifier, config.gelu, config.layer_norm_eps) == ("map", "tanh", 1e-6)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), got, want))


def test_big_vision_target_names_what_it_cannot_hold(dinov2_swiglu, tmp_path, capsys):
    """A DINOv2 has LayerScale, a SwiGLU MLP and exact GELU, which big_vision's ViT has no place for."""
    from convert_cli_helpers import assert_fails_cleanly

    assert_fails_cleanly([dinov2_swiglu[0] / "Dinov2Model", tmp_path / "bv.npz", "--to", "big-vision"], capsys,
                         "big_vision's ViT cannot express", "layer_scale=True", "mlp_type='swiglu_packed'",
                         "a class token with a position slot", "gelu='exact'", "--set gelu")


def test_transformers_siglip2_vision_model_at_its_fixed_resolution_in_and_back(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    model = perturb(Siglip2VisionModel(Siglip2VisionConfig(
        hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2, num_patches=16,
        patch_size=7)), seed=5)
    model.save_pretrained(tmp_path / "hf")
    images = np.random.default_rng(3).uniform(-1, 1, (2, 28, 28, 3)).astype(np.float32)
    # The processor's patches: (ph, pw, C)-ordered pixels of each patch, row-major
    patches = torch.from_numpy(images.reshape(2, 4, 7, 4, 7, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, -1))
    with torch.no_grad():
        want = model(pixel_values=patches, pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
                     spatial_shapes=torch.tensor([[4, 4], [4, 4]])).pooler_output.numpy()
    convert(tmp_path / "hf", tmp_path / "out.msgpack")
    config, params = vit_jax.load_pretrained(tmp_path / "out.msgpack")
    assert rel_l2(np.asarray(vit_jax.VisionTransformer(config).apply({"params": params}, images)), want) < 1e-5
    convert(tmp_path / "out.msgpack", tmp_path / "back", to_format="hf")
    back, info = Siglip2VisionModel.from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    written = {key.removeprefix("vision_model."): value
               for key, value in safetensors.torch.load_file(tmp_path / "back" / "model.safetensors").items()}
    original = {key.removeprefix("vision_model."): value for key, value in model.state_dict().items()}
    assert sorted(written) == sorted(original)
    for key, value in written.items():
        assert torch.equal(value, original[key]), key


# -- transformers DINOv2 with use_swiglu_ffn (DINOv2-g's HF layout) ------------------------------------------
SWIGLU_HF = {"Dinov2Model": dict(), "Dinov2WithRegistersModel": dict(num_register_tokens=2)}


@pytest.fixture(scope="module")
def dinov2_swiglu(tmp_path_factory):
    """Per class, a tiny perturbed transformers DINOv2 with use_swiglu_ffn and its save_pretrained directory."""
    transformers = pytest.importorskip("transformers")
    root, models = tmp_path_factory.mktemp("dinov2_swiglu"), {}
    for name, extra in SWIGLU_HF.items():
        # mlp_ratio 4 (the hub's giant's): int(32 * 4) * 2/3 = 85, rounded up to 88 gated units
        hf_config = getattr(transformers, name.replace("Model", "Config"))(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
            use_swiglu_ffn=True, **extra)
        torch.manual_seed(0)
        models[name] = perturb(getattr(transformers, name)(hf_config), seed=6)
        models[name].save_pretrained(root / name)
    return root, models


@pytest.mark.parametrize("name", sorted(SWIGLU_HF))
def test_transformers_dinov2_swiglu_in_and_back(dinov2_swiglu, tmp_path, capsys, name):
    """`convert DIR x.msgpack` with no flag (Flax and twin within 1e-5); --to hf writes use_swiglu_ffn and the
    hub's weights_in / weights_out, which transformers loads strict, every tensor bit-exact."""

    root, models = dinov2_swiglu
    source = models[name]
    config, _ = check_in(root / name, tmp_path / "x.msgpack", lambda x: source(pixel_values=x).pooler_output, capsys)
    assert (config.mlp_type, config.mlp_dim, config.name) == ("swiglu_packed", 88, name)
    convert(tmp_path / "x.msgpack", tmp_path / "back", to_format="hf")
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (written["use_swiglu_ffn"], written["mlp_ratio"], written["architectures"]) == (True, 4, [name])
    back, info = type(source).from_pretrained(tmp_path / "back", output_loading_info=True)
    assert not any(info.values()), info
    same_state(source.state_dict(), back.state_dict())
    on_disk = safetensors.torch.load_file(tmp_path / "back" / "model.safetensors")
    assert "encoder.layer.1.mlp.weights_in.weight" in on_disk  # the hub's names, as save_pretrained writes
    same_state(safetensors.torch.load_file(root / name / "model.safetensors"), on_disk)


@needs_transformers_5
def test_transformers_dinov2_swiglu_in_its_module_names_and_a_disagreeing_width(dinov2_swiglu, tmp_path, capsys):
    """transformers 5's own names (weights_in split into gate_proj, up_proj; down_proj) read as the hub's; a
    config.json whose mlp_ratio builds another width than the tensors' is refused, naming both."""
    import shutil

    from convert_cli_helpers import assert_fails_cleanly

    root, models = dinov2_swiglu
    (tmp_path / "v5").mkdir()
    shutil.copy(root / "Dinov2Model" / "config.json", tmp_path / "v5")
    state = models["Dinov2Model"].state_dict()
    assert "encoder.layer.0.mlp.gate_proj.weight" in state
    safetensors.torch.save_file(state, tmp_path / "v5" / "model.safetensors")
    convert(tmp_path / "v5", tmp_path / "v5.msgpack")
    convert(root / "Dinov2Model", tmp_path / "hub.msgpack")
    (_, got), (_, want) = vit_jax.load_pretrained(tmp_path / "v5.msgpack"), vit_jax.load_pretrained(
        tmp_path / "hub.msgpack")
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), got, want))

    data = json.loads((tmp_path / "v5" / "config.json").read_text())
    (tmp_path / "v5" / "config.json").write_text(json.dumps({**data, "mlp_ratio": 2}))  # 64 * 2/3 -> 48 units
    assert_fails_cleanly([tmp_path / "v5", tmp_path / "bad.msgpack"], capsys, "says mlp_dim=48", "mlp_dim=88")


@needs_transformers_5
def test_dinov2_swiglu_widths_are_transformers_own():
    """The width our config gets from (hidden_size, mlp_ratio) is the one Dinov2SwiGLUFFN builds (DINOv2-g:
    4096, timm's and the preset's); a width its rounding cannot make is refused on the way out."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.dinov2.modeling_dinov2 import Dinov2SwiGLUFFN

    from vit_jax.families import dinov2
    from vit_jax.formats import ConversionError, hf, hf_families

    giant = vit_jax.get_config("DINOv2-g_14")
    out = hf_families.hf_config(giant, hf_families.FAMILIES["dinov2"])
    assert (out["mlp_ratio"], out["use_swiglu_ffn"]) == (4, True)
    for hidden, ratio in [(1536, 4), (32, 4), (32, 2), (40, 3), (384, 5)]:
        with torch.device("meta"):
            built = Dinov2SwiGLUFFN(transformers.Dinov2Config(hidden_size=hidden, mlp_ratio=ratio))
        assert dinov2.transformers_mlp_width(hidden, ratio, True) == built.down_proj.in_features
    assert dinov2.transformers_mlp_width(1536, 4, True) == giant.mlp_dim == 4096
    hf.check_expressible(giant)
    with pytest.raises(ConversionError, match=r"mlp_dim 40 \(transformers' DINOv2 SwiGLU .* \[24, 48"):
        hf.check_expressible(giant.replace(hidden_size=32, mlp_dim=40, num_heads=2))
    with pytest.raises(ConversionError, match="q/v-only biases"):  # EVA-02's options have no HF DINOv2 form
        hf.check_expressible(giant.replace(key_bias=False))
    eva = vit_jax.get_config("EVA02-Ti_14").replace(classifier="token", fc_norm=False)
    with pytest.raises(ConversionError, match="mlp_type='swiglu_packed', rope=True, key_bias=False"):
        hf.check_expressible(eva)  # nor in the plain HF ViT's (nor torchvision's, vit-pytorch's)


def test_transformers_dinov2_classifier_is_named(dinov2_swiglu, tmp_path, capsys):
    """Dinov2ForImageClassification's head (class token and patch mean concatenated) is no option of the model:
    one error line that says so and how to convert its backbone."""
    from convert_cli_helpers import assert_fails_cleanly

    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config.from_pretrained(dinov2_swiglu[0] / "Dinov2Model", num_labels=3)
    transformers.Dinov2ForImageClassification(config).save_pretrained(tmp_path / "cls")
    assert_fails_cleanly([tmp_path / "cls", tmp_path / "out.msgpack"], capsys,
                         "Dinov2ForImageClassification's head", "model.dinov2.save_pretrained")
