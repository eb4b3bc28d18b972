"""Load pretrained ViT weights from any supported checkpoint format into the PyTorch twin.

    config, model = vit_torch_ref.load_pretrained("ViT-B_16.npz")
    logits = model(images_nchw)

Same formats and arguments as `vit_jax.load_pretrained` (a training run
directory included, with `step`; a vit-pytorch file with `format="vit-pytorch",
overrides={"num_heads": 8}`); the weights move
through the one mapping table (vit_jax/formats/mapping.py).
"""

from __future__ import annotations

import os
from typing import Any

from vit_jax.config import ViTConfig
from vit_jax.formats.mapping import flax_to_torch
from vit_jax.formats.read import read_state_dict
from vit_jax.formats.torch_arrays import to_torch
from vit_torch_ref.model import VisionTransformer


def load_pretrained(
    path: str | os.PathLike,
    config: ViTConfig | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    format: str | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[ViTConfig, VisionTransformer]:
    """(config, twin in eval mode holding the checkpoint's weights, loaded with strict=True)."""
    config, state = read_state_dict(path, format=format, config=config, image_size=image_size, num_classes=num_classes,
                                    step=step, allow_nonfinite=allow_nonfinite, overrides=overrides)
    return config, from_state_dict(state, config)


def from_state_dict(state: dict[str, Any], config: ViTConfig) -> VisionTransformer:
    """A twin in eval mode holding a timm-named state dict of NumPy arrays (emptied as it is moved)."""
    model = VisionTransformer(config)
    model.load_state_dict({k: to_torch(state.pop(k)) for k in list(state)}, strict=True)
    return model.eval()


def from_flax_params(params: dict[str, Any], config: ViTConfig) -> VisionTransformer:
    """A twin in eval mode holding Flax params (per-block or scanned) moved through the mapping table."""
    return from_state_dict(flax_to_torch(params, config), config)
