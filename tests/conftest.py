"""Shared test helpers: small configs, random images, error metrics."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

from vit_jax import VisionTransformer
from vit_jax.model import apply_with_intermediates

torch.set_num_threads(2)


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_same_gradients(got, want, rel: float = 1e-6):
    """Per parameter within `rel`; the key biases, whose exact gradient is zero (softmax ignores
    a shift shared by all keys), are rounding noise on both sides and only checked to be ~0."""
    scale = np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in jax.tree.leaves(want)))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        name = jax.tree_util.keystr(path)
        if "'key'" in name and "'bias'" in name:
            assert max(np.linalg.norm(a), np.linalg.norm(b)) < max(1e-6, 1e-2 * rel) * scale, name
        else:
            assert rel_l2(b, a) < rel, name


@functools.lru_cache(maxsize=None)
def _jitted_apply(config, intermediates=False, **kw):
    model = VisionTransformer(config)
    if intermediates:
        return jax.jit(lambda p, x, r: apply_with_intermediates(model, {"params": p}, x, rngs=r, **kw))
    return jax.jit(lambda p, x, r: model.apply({"params": p}, x, rngs=r, **kw))


def apply(config, params, images, rngs=None, intermediates=False, **kw):
    """Jitted apply, compiled once per (config, flags): eager dispatch is slow on CPU.

    With `intermediates`, (output, the sown intermediates by canonical name)."""
    return _jitted_apply(config, intermediates, **kw)(params, images, rngs)


def random_images(config, batch: int = 2, seed: int = 0) -> np.ndarray:
    """NHWC float32 images in [-1, 1] for `config`."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, *config.image_hw, config.num_channels)).astype(np.float32)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
