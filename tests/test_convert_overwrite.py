"""An existing DST (file, directory, symlink) is refused alike for every format, or replaced with --overwrite."""

from __future__ import annotations

import os

import pytest
from checkpoint_writers import random_flax_params, write_google_npz

from parity.convert_cli import main
from vit_jax import get_config
from vit_jax.formats.read import read_flax_params

CONFIG = get_config("ViT-testing")
# (DST name, extra arguments): directory formats and file formats
TARGETS = [("out_hf", ["--to", "hf"]), ("out_hub", ["--to", "timm-hub"]), ("out_orbax", []),
           ("out.safetensors", []), ("out.npz", [])]
IDS = ["hf-dir", "timm-hub", "orbax-dir", "safetensors", "npz"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.npz"
    write_google_npz(path, random_flax_params(CONFIG))
    return path


def refused(capsys, *argv: str) -> str:
    assert main([*map(str, argv), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("name, extra", TARGETS, ids=IDS)
def test_an_existing_file_at_dst_is_refused_for_every_format(tmp_path, npz, capsys, name, extra):
    dst = tmp_path / name
    dst.write_text("the user's notes\n")
    err = refused(capsys, npz, dst, *extra)
    assert f"{dst}: already exists (a file); pass --overwrite to replace it" in err
    assert dst.read_text() == "the user's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name, extra", TARGETS, ids=IDS)
def test_overwrite_replaces_a_file_or_an_earlier_output_directory(tmp_path, npz, capsys, name, extra):
    dst = tmp_path / name
    dst.write_text("an old output\n")
    assert main([str(npz), str(dst), "-q", "--overwrite", *extra]) == 0
    assert main([str(npz), str(dst), "-q", *extra]) == 2  # now it exists: refused again without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([str(npz), str(dst), "-q", "--overwrite", *extra]) == 0  # the conversion's own output
    if extra[1:] != ["timm-hub"] and extra[1:] != ["hf"]:
        config, _ = read_flax_params(dst)
        assert config.hidden_size == CONFIG.hidden_size
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name, extra", TARGETS, ids=IDS)
def test_a_directory_that_no_conversion_wrote_is_never_replaced(tmp_path, npz, capsys, name, extra):
    dst = tmp_path / name
    dst.mkdir()
    (dst / "photo.jpg").write_text("x")
    assert "already exists (a directory); pass --overwrite" in refused(capsys, npz, dst, *extra)
    assert "is a directory that no conversion wrote" in refused(capsys, npz, dst, "--overwrite", *extra)
    assert os.listdir(dst) == ["photo.jpg"]


def test_a_symlink_at_dst_is_refused_and_with_overwrite_replaced_not_followed(tmp_path, npz, capsys):
    target, dst = tmp_path / "target.npz", tmp_path / "out.npz"
    target.write_text("kept\n")
    dst.symlink_to(target)
    assert "already exists (a symlink)" in refused(capsys, npz, dst)
    assert main([str(npz), str(dst), "-q", "--overwrite"]) == 0
    assert not dst.is_symlink() and target.read_text() == "kept\n"


def test_an_existing_config_json_beside_dst_is_refused_too(tmp_path, npz, capsys):
    dst = tmp_path / "out.npz"
    (tmp_path / "out.npz.json").write_text("{}")
    assert "out.npz.json: already exists (a file)" in refused(capsys, npz, dst)
    assert not dst.exists()
