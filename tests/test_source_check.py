"""convert checks itself against the library each checkpoint came from, in both directions.

Per family of docs/conversion.md: the real timm / transformers / vit-pytorch model, tiny, every weight moved by
N(0, 0.2), at a size whose patch grid (3x3) differs from the architecture's default. `python -m parity convert
SRC x.msgpack` must print the reading figure (the library's own model of SRC against the Flax model), and
`convert x.msgpack BACK` the writing figure (BACK loaded strictly by the library against the Flax model).
A planted fault in the library's model (its GELU switched to tanh after it is built, which neither the tensors
nor the config show) must make convert refuse in both directions and write nothing.
"""

from __future__ import annotations

import re

import pytest
import safetensors.torch
import torch
from torchvision_stub import import_timm, import_vit_pytorch

from parity import source_models

timm = import_timm()
vit_pytorch = import_vit_pytorch()
transformers = pytest.importorskip("transformers")
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")

SMALL = dict(embed_dim=32, depth=2, num_heads=2)
P8, P14 = dict(img_size=24, patch_size=8), dict(img_size=42, patch_size=14)  # 3x3 grids
TIMM_FAMILIES = {  # id -> (architecture, model_args beyond SMALL)
    "vit": ("vit_tiny_patch16_224", dict(**P8, mlp_ratio=2.0, num_classes=5)),
    "deit-distilled": ("deit_tiny_distilled_patch16_224", dict(**P8, mlp_ratio=2.0)),
    "deit3": ("deit3_small_patch16_224", dict(**P8, mlp_ratio=2.0)),
    "dinov2-reg": ("vit_small_patch14_reg4_dinov2", dict(**P14, mlp_ratio=2.0)),
    "clip-quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(**P8, mlp_ratio=2.0)),
    "mae": ("vit_base_patch16_224", dict(**P8, mlp_ratio=2.0, global_pool="avg", fc_norm=True, num_classes=7)),
    "siglip": ("vit_base_patch16_siglip_224", dict(**P8, mlp_ratio=1.25, num_classes=0)),
    "dinov2-giant": ("vit_giant_patch14_dinov2", dict(**P14, mlp_ratio=2.5, init_values=1.0)),
    "eva02": ("eva02_tiny_patch14_224", dict(**P14, num_classes=3)),
}
_HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
HF_FAMILIES = {  # transformers class -> its config at a 3x3 grid
    "ViTForImageClassification": lambda: transformers.ViTConfig(**_HF, intermediate_size=64, image_size=24,
                                                                patch_size=8, num_labels=5),
    "DeiTForImageClassificationWithTeacher": lambda: transformers.DeiTConfig(
        **_HF, intermediate_size=64, image_size=24, patch_size=8, num_labels=5),
    "Dinov2Model": lambda: transformers.Dinov2Config(**_HF, image_size=42, patch_size=14, mlp_ratio=2),
    "Dinov2WithRegistersModel": lambda: transformers.Dinov2WithRegistersConfig(
        **_HF, image_size=42, patch_size=14, mlp_ratio=2, num_register_tokens=2),
    "CLIPVisionModelWithProjection": lambda: transformers.CLIPVisionConfig(
        **_HF, intermediate_size=64, image_size=24, patch_size=8, projection_dim=8),
    "SiglipVisionModel": lambda: transformers.SiglipVisionConfig(**_HF, intermediate_size=40, image_size=24,
                                                                 patch_size=8),
}
TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5
FIGURE = r"{direction} checked against {library} [^:]+: rel L2 ([0-9.e+-]+) on 2 inputs"


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return model.eval()


def timm_hub(arch: str, args: dict, path):
    from timm.models._hub import save_for_hf

    save_for_hf(perturbed(timm.create_model(arch, pretrained=False, **SMALL, **args)), path, safe_serialization=True)
    return path


def figure(out: str, direction: str, library: str) -> float:
    found = re.search(FIGURE.format(direction=direction, library=library), out)
    assert found, out
    return float(found.group(1))


def convert_cli(args, capsys) -> tuple[int, str, str]:
    from parity.convert_cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def both_directions(src, back, format: str, library: str, tmp_path, capsys, *flags: str) -> tuple[float, float]:
    code, out, err = convert_cli([src, tmp_path / "x.msgpack", *flags], capsys)
    assert code == 0, err
    reading = figure(out, "reading", library)
    code, out, err = convert_cli([tmp_path / "x.msgpack", back, "--to", format], capsys)
    assert code == 0, err
    writing = figure(out, "writing", library)
    assert reading <= 1e-5 and writing <= 1e-5
    return reading, writing


@needs_timm
@pytest.mark.parametrize("family", list(TIMM_FAMILIES))
def test_timm_family_checked_against_timm_both_ways(tmp_path, capsys, family):
    arch, args = TIMM_FAMILIES[family]
    src = timm_hub(arch, args, tmp_path / "hub")
    both_directions(src, tmp_path / "back", "timm-hub", "timm", tmp_path, capsys)
    # a timm-named state dict has no architecture: checked against the one the timm-hub writer names
    code, out, err = convert_cli([tmp_path / "x.msgpack", tmp_path / "x.safetensors"], capsys)
    assert code == 0 and figure(out, "writing", "timm") <= 1e-5, err + out


@pytest.mark.parametrize("name", list(HF_FAMILIES))
def test_transformers_family_checked_against_transformers_both_ways(tmp_path, capsys, name):
    torch.manual_seed(0)
    perturbed(getattr(transformers, name)(HF_FAMILIES[name]())).save_pretrained(tmp_path / "hf")
    both_directions(tmp_path / "hf", tmp_path / "back", "hf", "transformers", tmp_path, capsys)


def test_every_checked_class_is_a_transformers_class_with_a_known_output():
    """The families declare which output of each class is compared; a misspelt class or output would silently
    leave a family unchecked."""
    from vit_jax.families import SOURCE_OUTPUTS

    for name, output in source_models.TRANSFORMERS_OUTPUTS.items():
        assert hasattr(transformers, name), name
        assert output in SOURCE_OUTPUTS, (name, output)
    assert {"DeiTModel", "Dinov2Model", "CLIPModel", "SiglipVisionModel"} <= set(source_models.TRANSFORMERS_OUTPUTS)


@pytest.mark.skipif(vit_pytorch is None, reason="vit-pytorch is not installed (pip install vit-pytorch)")
def test_vit_pytorch_checked_against_vit_pytorch_both_ways(tmp_path, capsys):
    torch.manual_seed(0)
    model = perturbed(vit_pytorch.ViT(image_size=24, patch_size=8, num_classes=5, dim=32, depth=2, heads=2,
                                      mlp_dim=48, dim_head=16))
    safetensors.torch.save_file(model.state_dict(), tmp_path / "vit.safetensors")
    both_directions(tmp_path / "vit.safetensors", tmp_path / "back.pt", "vit-pytorch", "vit-pytorch", tmp_path,
                    capsys, "--from", "vit-pytorch", "--set", "num_heads=2")


# -- a planted fault: what the library computes changes, its tensors and config do not ---------------------------
@needs_timm
def test_planted_fault_in_the_source_library_is_refused_both_ways(tmp_path, capsys, monkeypatch):
    arch, args = TIMM_FAMILIES["vit"]
    src = timm_hub(arch, args, tmp_path / "hub")
    code, _, err = convert_cli([src, tmp_path / "good.msgpack"], capsys)
    assert code == 0, err
    create = timm.create_model

    def create_with_tanh_gelu(*a, **kw):
        model = create(*a, **kw)
        for block in model.blocks:
            block.mlp.act = torch.nn.GELU(approximate="tanh")
        return model

    monkeypatch.setattr(timm, "create_model", create_with_tanh_gelu)
    code, out, err = convert_cli([src, tmp_path / "x.msgpack"], capsys)
    assert code == 2 and "reading differs from timm" in err and "output 'output' of input 0" in err, err
    assert "nothing was written" in err and not (tmp_path / "x.msgpack").exists()
    assert not (tmp_path / "x.msgpack.json").exists()
    code, out, err = convert_cli([tmp_path / "good.msgpack", tmp_path / "back", "--to", "timm-hub"], capsys)
    assert code == 2 and "writing differs from timm" in err and not (tmp_path / "back").exists(), err
    # --no-verify skips the check: the same conversion goes through, and says nothing of timm
    code, out, err = convert_cli([src, tmp_path / "x.msgpack", "--no-verify"], capsys)
    assert code == 0 and "checked against" not in out and (tmp_path / "x.msgpack").exists(), err


@needs_timm
def test_a_library_that_is_not_installed_is_one_line(tmp_path, capsys, monkeypatch):
    arch, args = TIMM_FAMILIES["vit"]
    src = timm_hub(arch, args, tmp_path / "hub")
    monkeypatch.setitem(source_models.MODULES, "timm", "timm_is_not_installed_here")
    code, out, err = convert_cli([src, tmp_path / "x.msgpack"], capsys)
    assert code == 0, err
    notes = [line for line in out.splitlines() if "not checked against timm" in line]
    assert len(notes) == 1 and "pip install timm" in notes[0], out


# -- python -m parity report --against-source ---------------------------------------------------------------------
def report(src, out, *flags: str) -> tuple[int, dict]:
    import json

    from parity.report_cli import main

    code = main(["--checkpoint", str(src), "--against-source", "--out", str(out), *flags])
    return code, json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}


def _tanh_gelu_in_timm(monkeypatch):
    create = timm.create_model

    def create_with_tanh_gelu(*a, **kw):
        model = create(*a, **kw)
        for block in model.blocks:
            block.mlp.act = torch.nn.GELU(approximate="tanh")
        return model

    monkeypatch.setattr(timm, "create_model", create_with_tanh_gelu)


@needs_timm
def test_report_against_timm_passes_layer_by_layer_and_fails_a_planted_fault(tmp_path, monkeypatch):
    arch, args = TIMM_FAMILIES["deit3"]  # LayerScale: its branches are exposed after timm's ls1 / ls2
    src = timm_hub(arch, args, tmp_path / "hub")
    code, rep = report(src, tmp_path / "good", "--backward")
    assert code == 0 and rep["verdict"] == "pass", rep["first_failure"]
    assert rep["against_source"].startswith("timm ") and rep["environment"]["versions"]["timm"] == timm.__version__
    judged = {r["name"] for r in rep["rows"] if r["judged"]}
    assert {"blocks.1", "blocks.1.attn", "blocks.1.mlp", "blocks.1.attn_probs", "logits"} <= judged
    assert "Transformer/encoderblock_1/LayerScale_1/scale" in judged  # timm's own gradient, through the name table
    # timm's GELU switched to tanh after it is built: neither its tensors nor its config show it
    _tanh_gelu_in_timm(monkeypatch)
    code, rep = report(src, tmp_path / "bad")
    first = rep["first_failure"]
    assert code == 1 and rep["verdict"] == "fail" and first["name"] == "blocks.0.mlp", first
    assert "float64" in first["failed_checks"]


def test_report_against_transformers_lists_what_it_cannot_see(tmp_path):
    torch.manual_seed(0)
    perturbed(transformers.Dinov2Model(HF_FAMILIES["Dinov2Model"]())).save_pretrained(tmp_path / "hf")
    code, rep = report(tmp_path / "hf", tmp_path / "out")
    assert code == 0 and rep["against_source"].startswith("transformers "), rep["first_failure"]
    rows = {r["name"]: r for r in rep["rows"]}
    assert rows["blocks.1"]["judged"] and rows["pre_logits"]["judged"]
    probs = rows["blocks.1.attn_probs"]  # 4.x: its eager softmax is float32 in a float64 model, so its f64 run is sdpa
    assert probs["judged"] if not TRANSFORMERS_4 else "softmax in float32" in probs["note"]
    hidden = rows["blocks.1.mlp"]  # transformers returns layer outputs and attentions, not a layer's branches
    assert not hidden["judged"] and hidden["check"] == "not compared" and "does not expose" in hidden["note"]
    assert "not compared" in (tmp_path / "out" / "report.md").read_text()


def test_report_against_source_needs_a_source(tmp_path, capsys):
    from parity.report_cli import main

    assert main(["--config", "ViT-testing", "--against-source", "--out", str(tmp_path / "r")]) == 2
    assert "--against-source needs --checkpoint" in capsys.readouterr().err
