"""Shared test helpers: small configs, random images, error metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def rel_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def random_images(config, batch: int = 2, seed: int = 0) -> np.ndarray:
    """NHWC float32 images in [-1, 1] for `config`."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, *config.image_hw, config.num_channels)).astype(np.float32)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
