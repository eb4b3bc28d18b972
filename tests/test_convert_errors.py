"""Bad inputs to the converter: each is a clear error naming file, tensor and expectation,
a non-zero exit at the CLI without a traceback, and no output left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from checkpoint_writers import random_flax_params, randomize, write_google_npz
from convert_cli_helpers import assert_fails_cleanly, run_cli

import vit_torch_ref
from parity.convert import convert
from parity.convert_cli import main
from vit_jax import get_config
from vit_jax.formats import ConversionError

CONFIG = get_config("ViT-testing")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def good_npz(tmp_path):
    flat = random_flax_params(CONFIG)
    write_google_npz(tmp_path / "good.npz", flat)
    return tmp_path / "good.npz", flat


# -- unreadable files ------------------------------------------------------------------
def test_unknown_file(tmp_path, capsys):
    (tmp_path / "junk.bin2").write_bytes(b"this is not a checkpoint\n" * 50)
    assert_fails_cleanly([tmp_path / "junk.bin2", tmp_path / "out.npz"], capsys, "junk.bin2",
                         "unknown checkpoint format",
                         "--from")


@pytest.mark.parametrize("name, write", [
    ("t.npz", lambda p, flat, sd: write_google_npz(p, flat)),
    ("t.safetensors", lambda p, flat, sd: safetensors.torch.save_file(sd, p)),
    ("t.pt", lambda p, flat, sd: torch.save(sd, p)),
    ("t.msgpack", lambda p, flat, sd: p.write_bytes(__import__("flax").serialization.msgpack_serialize(
        __import__("vit_jax.formats.mapping", fromlist=["unflatten"]).unflatten(flat)))),
])
def test_truncated_file(tmp_path, capsys, name, write):
    flat = random_flax_params(CONFIG)
    state = vit_torch_ref.VisionTransformer(CONFIG).state_dict()
    path = tmp_path / name
    write(path, flat, state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    line = assert_fails_cleanly([path, tmp_path / "out.npz" if name != "t.npz" else tmp_path / "out.safetensors"],
                                capsys, name)
    assert "corrupt" in line or "truncated" in line


def test_corrupt_tensor_bytes_are_named(tmp_path, capsys, good_npz):
    src, flat = good_npz
    data = bytearray(src.read_bytes())
    # Flip bytes inside the stored fc1 kernel: the zip CRC catches it when that tensor is read.
    target = flat["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"].tobytes()[:64]
    at = bytes(data).index(target)
    data[at: at + 8] = b"\xff" * 8
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    assert_fails_cleanly([bad, tmp_path / "out.safetensors"], capsys, "bad.npz",
                         "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel", "corrupt")


def test_empty_file_and_plain_directory(tmp_path, capsys):
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_fails_cleanly([tmp_path / "empty.npz", tmp_path / "o.safetensors"], capsys, "empty.npz", "empty")
    (tmp_path / "somedir").mkdir()
    assert_fails_cleanly([tmp_path / "somedir", tmp_path / "o.safetensors"], capsys, "somedir", "orbax",
                         "Hugging Face")
    assert_fails_cleanly([tmp_path / "missing.npz", tmp_path / "o.safetensors"], capsys, "missing.npz",
                         "no such file")


# -- tensors that do not fit ------------------------------------------------------------
def test_missing_tensor(tmp_path, capsys, good_npz):
    _, flat = good_npz
    del flat["Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"]
    write_google_npz(tmp_path / "m.npz", flat)
    assert_fails_cleanly([tmp_path / "m.npz", tmp_path / "o.safetensors"], capsys, "m.npz", "missing tensor",
                         "'Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias'", "expected shape (32,)")


def test_unexpected_tensor(tmp_path, capsys, good_npz):
    _, flat = good_npz
    write_google_npz(tmp_path / "u.npz", flat, extra={"Transformer/encoderblock_0/extra/kernel": np.zeros(3)})
    assert_fails_cleanly([tmp_path / "u.npz", tmp_path / "o.safetensors"], capsys, "u.npz", "unexpected tensor",
                         "Transformer/encoderblock_0/extra/kernel")
    state = {f"vit.{k}": v for k, v in {"embeddings.patch_embeddings.projection.weight": torch.zeros(32, 3, 4, 4),
                                        "encoder.layer.0.attention.attention.rotary.weight": torch.zeros(2)}.items()}
    safetensors.torch.save_file(state, tmp_path / "hf.safetensors")
    assert_fails_cleanly([tmp_path / "hf.safetensors", tmp_path / "o.npz"], capsys, "hf.safetensors",
                         "vit.encoder.layer.0.attention.attention.rotary.weight", "Hugging Face")


def test_tensor_shape_that_contradicts_the_architecture(tmp_path, capsys, good_npz):
    _, flat = good_npz
    flat["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"] = np.zeros((32, 48), np.float32)
    write_google_npz(tmp_path / "s.npz", flat)
    assert_fails_cleanly([tmp_path / "s.npz", tmp_path / "o.safetensors"], capsys, "s.npz",
                         "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel", "(32, 48)", "expected (32, 64)")


def test_config_that_contradicts_the_tensors(tmp_path, capsys, good_npz):
    src, _ = good_npz
    wrong = tmp_path / "wrong.json"
    wrong.write_text(CONFIG.replace(mlp_dim=128).to_json())
    # mlp_dim is the width the MLP's second layer reads (a SwiGLU's first layer is twice as wide)
    assert_fails_cleanly([src, tmp_path / "o.safetensors", "--config", wrong], capsys, "good.npz", "mlp_dim=128",
                         "MlpBlock_0/Dense_1/kernel", "mlp_dim=64")
    assert_fails_cleanly([src, tmp_path / "o.safetensors", "--config", "ViT-B_16"], capsys, "good.npz",
                         "patch_size=16", "embedding/kernel")
    # A config JSON beside a file that no longer matches it is caught too.
    model = randomize(vit_torch_ref.VisionTransformer(CONFIG))
    safetensors.torch.save_file(model.state_dict(), tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors.json").write_text(CONFIG.replace(num_heads=4, num_layers=3).to_json())
    assert_fails_cleanly([tmp_path / "m.safetensors", tmp_path / "o.npz"], capsys, "m.safetensors", "num_layers=3")


def test_heads_needed_but_not_inferable(tmp_path, capsys):
    model = randomize(vit_torch_ref.VisionTransformer(CONFIG))
    safetensors.torch.save_file(model.state_dict(), tmp_path / "m.safetensors")
    assert_fails_cleanly([tmp_path / "m.safetensors", tmp_path / "o.npz"], capsys, "m.safetensors",
                         "attention heads", "--config")
    code, _ = run_cli([tmp_path / "m.safetensors", tmp_path / "o.npz", "--config", "ViT-testing", "-q"], capsys)
    assert code == 0 and (tmp_path / "o.npz").exists()


def test_sincos_needs_the_image_size(tmp_path, capsys):
    config = CONFIG.replace(posemb="sincos2d", classifier="gap")
    write_google_npz(tmp_path / "s.npz", random_flax_params(config))
    assert_fails_cleanly([tmp_path / "s.npz", tmp_path / "o.msgpack"], capsys, "s.npz", "image size")
    (tmp_path / "s.json").write_text(config.to_json())
    code, err = run_cli([tmp_path / "s.npz", tmp_path / "o.msgpack", "--config", tmp_path / "s.json"], capsys)
    assert code == 0, err


# -- architectures a format cannot express ------------------------------------------------
@pytest.mark.parametrize("overrides, to, fragment", [
    (dict(posemb="sincos2d", classifier="gap"), "torchvision", "posemb 'sincos2d'"),
    (dict(classifier="gap"), "torchvision", "classifier 'gap'"),
    (dict(num_classes=0), "torchvision", "num_classes=0"),
    (dict(qkv_bias=False), "torchvision", "qkv_bias=False"),
    (dict(classifier="gap"), "hf", "classifier 'gap'"),
    (dict(representation_size=16), "hf", "representation_size"),
])
def test_architecture_the_target_cannot_express(tmp_path, capsys, overrides, to, fragment):
    config = CONFIG.replace(**overrides)
    write_google_npz(tmp_path / "x.npz", random_flax_params(config))
    (tmp_path / "x.npz.json").write_text(config.to_json())
    assert_fails_cleanly([tmp_path / "x.npz", tmp_path / "o.pth", "--to", to], capsys, "cannot express", fragment)


# -- safe loading ---------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_pickle_code_is_never_executed(tmp_path, capsys):
    _Exploit.marker = tmp_path / "pwned"
    torch.save({"patch_embed.proj.weight": _Exploit()}, tmp_path / "evil.pt")
    assert_fails_cleanly([tmp_path / "evil.pt", tmp_path / "o.npz"], capsys, "evil.pt", "weights_only")
    assert not _Exploit.marker.exists()
    np.savez(tmp_path / "obj.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    assert_fails_cleanly([tmp_path / "obj.npz", tmp_path / "o.safetensors"], capsys, "obj.npz")


# -- the command line ----------------------------------------------------------------------
def test_failure_leaves_an_existing_destination_untouched(tmp_path, capsys, good_npz):
    src, _ = good_npz
    (tmp_path / "keep.pth").write_bytes(b"precious")
    argv = [src, tmp_path / "keep.pth", "--to", "torchvision", "--num-classes", "0", "--overwrite"]
    assert_fails_cleanly(argv, capsys, "num_classes=0")
    assert (tmp_path / "keep.pth").read_bytes() == b"precious"


def test_bad_usage_exits_2(tmp_path, capsys, good_npz):
    src, _ = good_npz
    for argv in ([src, tmp_path / "o.npz", "--from", "keras"], [src], [src, tmp_path / "o.xyz"],
                 [src, tmp_path / "o.npz", "--image-size", "big"], [src, src]):
        code, err = run_cli(argv, capsys)
        assert code == 2 and "error:" in err and "Traceback" not in err, (argv, err)
    with pytest.raises(ConversionError, match="unknown format 'keras'"):
        convert(src, tmp_path / "o.npz", from_format="keras")
    assert sorted(os.listdir(tmp_path)) == ["good.npz"]


def test_help_documents_every_format_and_flag(capsys):
    code, _ = main(["--help"]), None
    help_text = capsys.readouterr().out
    assert code == 0
    for word in ("google-npz", "flax", "torch", "hf", "torchvision", "--from", "--to", "--config", "--image-size",
                 "--num-classes", "opt/target", "MlpBlock_3", "orbax", "safetensors", "weights_only"):
        assert word in help_text, word


def test_python_m_parity_convert_end_to_end(tmp_path, good_npz):
    src, _ = good_npz
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "parity", "convert", str(src), str(tmp_path / "o.safetensors")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # no per-tensor lines for a small model
    assert "read" in run.stderr and "wrote" in run.stderr and "converted" not in run.stderr
    assert (tmp_path / "o.safetensors").exists() and (tmp_path / "o.safetensors.json").exists()


def test_an_existing_directory_is_never_replaced(tmp_path, capsys, good_npz):
    src, _ = good_npz
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_fails_cleanly([src, mine], capsys, "my_folder", "already exists (a directory)")
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("assignment, expected", [
    ("image_size=48,64", 'image_size="48,64": expected an integer or a list [an integer, an integer], got str'),
    ("layer_norm_eps=abc", 'layer_norm_eps="abc": expected a number, got str'),
    ('image_size={"a":1}', 'image_size={"a": 1}: expected an integer or a list [an integer, an integer], got dict'),
    ("num_heads=true", "num_heads=true: expected an integer, got bool"),
])
def test_a_set_value_of_the_wrong_type_is_one_error_line(tmp_path, capsys, good_npz, assignment, expected):
    assert main([str(good_npz[0]), str(tmp_path / "out.npz"), "--set", assignment]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --set {expected} (values are JSON: a pair is [48, 64])", err
    assert not (tmp_path / "out.npz").exists()


def test_an_image_given_as_a_checkpoint_names_the_formats_tried(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photo.png")  # its first byte reads as msgpack
    assert main([str(tmp_path / "photo.png"), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'photo.png'}: not a checkpoint in a format read here (tried Google "
                          f".npz, safetensors, PyTorch and Flax msgpack: "), err
    assert "pass --from one of" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("keep, reason", [
    (40, "the header declares {} bytes of JSON, the file holds 32 after the length"),
    (5, "the file has 5 bytes, fewer than a header's 8-byte length and its JSON"),
])
def test_a_safetensors_file_cut_inside_its_header_says_so(tmp_path, capsys, keep, reason):
    state = vit_torch_ref.VisionTransformer(CONFIG).state_dict()
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file(state, path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    assert main([str(path), str(tmp_path / "out.npz")]) == 2
    declared = int.from_bytes(data[:8], "little")
    assert capsys.readouterr().err.strip() == (f"error: {path}: the safetensors header is damaged "
                                               f"({reason.format(declared)}); the file is corrupt or truncated")
