"""Shared helpers of the family tests: real timm / transformers models, tiny, with perturbed weights, and the
conversion checked against them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from conftest import apply, nchw, rel_l2
from convert_cli_helpers import run_cli

from parity.convert import convert
from vit_jax.formats.read import read_flax_params
from vit_torch_ref.pretrained import load_pretrained as load_twin

FLOAT32 = 1e-5  # relative L2 within which two float32 computations of one function agree on these sizes


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter moved away from its init (unit norms, zero biases, LayerScale would hide errors)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def images(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def save_timm_hub(path: Path, arch: str, state: dict, model_args: dict) -> Path:
    """A timm hub directory as timm's save_for_hf lays it out: config.json with the architecture and the
    model_args, model.safetensors with `state`."""
    path.mkdir(parents=True)
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors",
                                metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({"architecture": arch, "model_args": model_args,
                                                  "num_classes": model_args.get("num_classes", 0)}))
    return path


def converted_matches(src: Path, dst: Path, want: np.ndarray, x: np.ndarray):
    """`convert SRC DST.msgpack`, then the Flax model and the twin against the source's output `want`;
    returns (config, params)."""
    convert(src, dst)
    config, params = read_flax_params(dst)
    assert rel_l2(apply(config, params, x), want) < FLOAT32
    _, twin = load_twin(src)
    with torch.no_grad():
        assert rel_l2(twin(nchw(x)).numpy(), want) < FLOAT32
    return config, params


def check_in(src: Path, dst: Path, want_fn, capsys) -> tuple:
    """`convert SRC DST.msgpack` at the CLI, then the Flax model and the twin against the source's output."""
    code, err = run_cli([src, dst], capsys)
    assert code == 0, err
    config, params = read_flax_params(dst)
    images = np.random.default_rng(0).uniform(-1, 1, (2, *config.image_hw, 3)).astype(np.float32)
    with torch.no_grad():
        want = want_fn(nchw(images)).numpy()
    assert rel_l2(apply(config, params, images), want) < 1e-5
    _, twin = load_twin(src)
    with torch.no_grad():
        assert rel_l2(twin(nchw(images)).numpy(), want) < 1e-5
    return config, params


def same_state(want: dict, got: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
