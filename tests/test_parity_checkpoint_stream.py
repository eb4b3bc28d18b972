"""`--checkpoint` streams: the report's weights are read from the file a mapping rule at a time.

The lazy mapping (vit_jax.formats.stream) must give exactly the arrays of the eager path
(`load_pretrained`, flattened per block, float32) in every format, hold one rule's tensors at a
time, read block i's tensors only for block i's paths, and refuse a bad tensor before the report's
first pass; the report from a checkpoint must be the eager path's, row for row.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from checkpoint_writers import random_flax_params, write_google_npz
from safetensors.numpy import save_file

import parity.report_cli
import vit_jax.formats.stream
from parity import harness
from parity.convert import convert
from parity.report_cli import main
from vit_jax.config import get_config
from vit_jax.formats import ConversionError, mapping
from vit_jax.formats.read import read_flax_params
from vit_jax.formats.stream import open_flax_params_lazy
from vit_jax.params import stack_block_params

SMALL = "ViT-testing"  # 16 px, patch 4, hidden 32, 2 heads, 2 layers, 10 classes
CONFIG = get_config(SMALL)


def eager(path, **kw) -> dict[str, np.ndarray]:
    """What the report read before it streamed: the whole model, flattened per block, in float32."""
    _, params = read_flax_params(path, **kw)
    return harness.flat_per_block(harness.cast_params(params, np.float32))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One random tiny model in each format: Google .npz (per-block and scanned), and converted from it."""
    folder = tmp_path_factory.mktemp("ckpts")
    flat = random_flax_params(CONFIG, seed=4)
    write_google_npz(folder / "google.npz", flat)
    scanned = mapping.flatten(stack_block_params(mapping.unflatten(flat), CONFIG.num_layers))
    assert any(k.startswith("Transformer/encoderblock/") for k in scanned)
    write_google_npz(folder / "scanned.npz", scanned)
    for name, to in (("timm.safetensors", None), ("timm.pt", None), ("hf", "hf"), ("flax.msgpack", None)):
        convert(folder / "google.npz", folder / name, to_format=to, config=SMALL)
    return folder


def counting(params) -> list[str]:
    """The source keys `params` reads from its file from now on, in order."""
    reads, loader = [], params.source.loader
    params.source.loader = lambda key: reads.append(key) or loader(key)
    return reads


@pytest.mark.parametrize("name", ["google.npz", "scanned.npz", "timm.safetensors", "timm.pt", "hf", "flax.msgpack"])
def test_lazy_params_are_the_eager_ones_read_one_rule_at_a_time(files, name):
    path = files / name
    want = eager(path, config=SMALL)
    config, params = open_flax_params_lazy(path, config=SMALL)
    assert config == read_flax_params(path, config=SMALL)[0]
    assert sorted(params) == sorted(want) and len(params) == len(want)
    reads = counting(params)
    assert "head/kernel" in params and "head/nothing" not in params and reads == []  # no read to find out
    for group in harness.groups(config):
        del reads[:]
        rules = mapping.rules_by_group(config)[group]
        for path_ in [p for rule in rules for p in rule.flax]:
            got = params[path_]
            assert got.dtype == np.float32 and not got.flags.writeable
            np.testing.assert_array_equal(got, want[path_], err_msg=path_)
            held = params._held[1]  # the last rule's arrays, nothing more
            assert path_ in held and set(held) <= {p for r in rules for p in r.flax if path_ in r.flax}
        # a group's paths read that group's source tensors, each once (a fused qkv serves three paths)
        assert reads == [key for r in rules for key in (r.flax if params.source.naming == "flax" else (r.torch,))]


def test_scanned_npz_reads_one_layer_of_a_stacked_member(files, monkeypatch):
    """A block of an uncompressed scanned .npz reads its layer's bytes, not the whole stacked member."""
    whole = []
    get = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: whole.append(key) or get(self, key))
    _, params = open_flax_params_lazy(files / "scanned.npz", config=SMALL, check=False)
    for rule in mapping.rules_by_group(CONFIG)[1]:
        for path_ in rule.flax:
            params[path_]
    assert whole == []


def test_overrides_and_bfloat16_files_read_as_the_eager_path(tmp_path):
    flat = random_flax_params(CONFIG, seed=5)
    write_google_npz(tmp_path / "bf16.npz", {k: v.astype("bfloat16") for k, v in flat.items()})
    # --set states the head count, which a timm file (no config beside it) does not show: q/k/v are split by it
    save_file(mapping.flax_to_torch(mapping.unflatten(flat), CONFIG), str(tmp_path / "m.safetensors"))
    for path, kw in ((tmp_path / "bf16.npz", {}), (tmp_path / "m.safetensors", {"overrides": {"num_heads": 4}})):
        want = eager(path, **kw)
        config, params = open_flax_params_lazy(path, **kw)
        assert config == read_flax_params(path, **kw)[0]
        for key, value in want.items():
            assert params[key].dtype == np.float32
            np.testing.assert_array_equal(params[key], value)
    query = params["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"]
    assert config.num_heads == 4 and query.shape == (32, 4, 8)


def test_a_bad_tensor_is_refused_before_the_first_pass(tmp_path, capsys, monkeypatch):
    flat = random_flax_params(CONFIG, seed=6)
    flat["head/kernel"][0, 0] = np.nan  # the last tensor the passes would use
    write_google_npz(tmp_path / "nan.npz", flat)
    with pytest.raises(ConversionError, match="head/kernel.*non-finite"):
        open_flax_params_lazy(tmp_path / "nan.npz")
    _, params = open_flax_params_lazy(tmp_path / "nan.npz", check=False)  # a lookup checks too
    with pytest.raises(ConversionError, match="non-finite"):
        params["head/kernel"]
    passes = []
    monkeypatch.setattr(parity.report_cli.passes, "compare", lambda *a, **k: passes.append(1))
    assert main(["--checkpoint", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "out")]) == 2
    assert "head/kernel" in capsys.readouterr().err and passes == []
    assert not (tmp_path / "out").exists()
    # found only during the passes (the file changed after its checking pass): still one error line, no report
    monkeypatch.undo()
    monkeypatch.setattr(vit_jax.formats.stream.LazyFlatParams, "check_all", lambda self: None)
    assert main(["--checkpoint", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "out")]) == 2
    assert "head/kernel" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, args", [("timm.safetensors", ["--backward"]), ("google.npz", [])])
def test_report_from_a_checkpoint_equals_the_eager_report(files, tmp_path, monkeypatch, name, args):
    common = ["--checkpoint", str(files / name), "--config", SMALL, "--batch", "1", *args]
    reads = collections.Counter()
    load = vit_jax.formats.stream.load_checked
    monkeypatch.setattr(vit_jax.formats.stream, "load_checked", lambda s, k, a: reads.update([k]) or load(s, k, a))
    assert main([*common, "--out", str(tmp_path / "lazy")]) == 0
    # each tensor: the checking pass, then once per pass for the four sides (the head and embedding stages
    # share the outer group: read at the embedding, the head and, going back down, the embedding again)
    outer = {k for rule in mapping.rules_by_group(CONFIG)[None]
             for k in (rule.flax if "npz" in name else (rule.torch,))}
    assert {key: n for key, n in reads.items() if key in outer} == dict.fromkeys(outer, 4 if args else 3)
    assert {n for key, n in reads.items() if key not in outer} == {3 if args else 2}
    monkeypatch.undo()
    streamed = json.loads((tmp_path / "lazy" / "report.json").read_text())

    def read_whole(path, config=None, overrides=None, dtype=None):
        assert dtype == np.float32
        resolved, _ = read_flax_params(path, config=config, overrides=overrides)
        return resolved, eager(path, config=config, overrides=overrides)

    monkeypatch.setattr(parity.report_cli, "open_flax_params_lazy", read_whole)
    assert main([*common, "--out", str(tmp_path / "eager")]) == 0
    whole = json.loads((tmp_path / "eager" / "report.json").read_text())
    assert streamed["rows"] == whole["rows"] and streamed["config"] == whole["config"]
    assert len(streamed["rows"]) > 10 and streamed["weights"] == whole["weights"]
