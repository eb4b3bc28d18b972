"""`hf-hub:ORG/NAME[@REVISION]` checkpoint names: resolved through huggingface_hub's cache, offline, and then read as
the local directory is. The cache is written here by hand (tests/hub_cache.py); nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from convert_cli_helpers import assert_fails_cleanly, run_cli
from hub_cache import add_snapshot, use_cache
from torchvision_stub import import_timm

import vit_jax
from vit_jax.formats import ConversionError
from vit_jax.formats.hub import parse_hub_name, resolve_checkpoint
from vit_jax.formats.read import read_flax_params

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install --no-deps timm)")
REPO = "timm/vit_tiny_reg4_dinov2.test"


def _timm_dir(path, seed):
    from timm.models._hub import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, embed_dim=32, depth=2, num_heads=2,
                              mlp_ratio=2.0, img_size=28, patch_size=14, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.2)
    save_for_hf(model, path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A cache holding two revisions of REPO (main the newer), and the local directories they were copied from."""
    root = tmp_path_factory.mktemp("hub")
    old, new = _timm_dir(root / "old", 0), _timm_dir(root / "new", 1)
    cache = root / "cache"
    old_commit = add_snapshot(cache, REPO, old, main=False)
    add_snapshot(cache, REPO, new)
    return cache, old, new, old_commit


def _same(a, b):
    flat_a = dict(jax_leaves(a))
    flat_b = dict(jax_leaves(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


def jax_leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from jax_leaves(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


def test_hub_name_loads_as_the_local_directory(hub, monkeypatch):
    cache, _, new, _ = hub
    use_cache(monkeypatch, cache)
    config, params = vit_jax.load_pretrained(f"hf-hub:{REPO}")
    local_config, local_params = vit_jax.load_pretrained(new)
    assert config == local_config and config.num_register_tokens == 4
    _same(params, local_params)


def test_a_revision_is_pinned(hub, monkeypatch):
    cache, old, new, old_commit = hub
    use_cache(monkeypatch, cache)
    _, pinned = read_flax_params(f"hf-hub:{REPO}@{old_commit}")
    _same(pinned, read_flax_params(old)[1])
    assert not np.array_equal(pinned["head"]["kernel"], read_flax_params(new)[1]["head"]["kernel"])


def test_convert_cli_reads_a_hub_name(hub, tmp_path, monkeypatch, capsys):
    cache, _, new, _ = hub
    use_cache(monkeypatch, cache)
    code, err = run_cli([f"hf-hub:{REPO}", tmp_path / "out.msgpack"], capsys)
    assert code == 0, err
    _same(read_flax_params(tmp_path / "out.msgpack")[1], read_flax_params(new)[1])


def test_a_repository_missing_from_the_offline_cache_is_one_clean_error(hub, tmp_path, monkeypatch, capsys):
    cache, *_ = hub
    use_cache(monkeypatch, cache)
    assert_fails_cleanly(["hf-hub:timm/not_in_the_cache", tmp_path / "out.msgpack"], capsys,
                         "hf-hub:timm/not_in_the_cache", "not in the Hugging Face cache", str(cache))


@pytest.mark.parametrize("name", ["hf-hub:", "hf-hub:just_a_name", "hf-hub:org/name@", "hf-hub:org/na me"])
def test_malformed_hub_names_are_refused(name):
    with pytest.raises(ConversionError, match="expected hf-hub:ORG/NAME"):
        parse_hub_name(name)


def test_other_paths_are_left_alone(tmp_path):
    assert resolve_checkpoint(tmp_path) == tmp_path and resolve_checkpoint("ViT-B_16.npz") == "ViT-B_16.npz"


def test_predict_takes_a_hub_name(hub, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from vit_jax.predict import main as predict_main

    cache, _, new, _ = hub
    use_cache(monkeypatch, cache)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict_main(["--checkpoint", f"hf-hub:{REPO}", str(tmp_path / "x.png"), "--top-k", "5"]) == 0
    by_name = capsys.readouterr().out.splitlines()[-1]
    assert predict_main(["--checkpoint", str(new), str(tmp_path / "x.png"), "--top-k", "5"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == by_name
