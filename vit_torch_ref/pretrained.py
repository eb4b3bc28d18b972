"""Load pretrained ViT weights from any supported checkpoint format into the PyTorch twin.

    config, model = vit_torch_ref.load_pretrained("ViT-B_16.npz")
    logits = model(images_nchw)

Same formats and arguments as `vit_jax.load_pretrained` (a training run
directory included, with `step`; a vit-pytorch file with `format="vit-pytorch",
overrides={"num_heads": 8}`); the weights move
through the one mapping table (parity/mapping.py).
"""

from __future__ import annotations

import os
from typing import Any

from vit_jax.config import ViTConfig
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
    from parity.arrays import to_torch
    from parity.convert import read_state_dict

    config, state = read_state_dict(path, format=format, config=config, image_size=image_size, num_classes=num_classes,
                                    step=step, allow_nonfinite=allow_nonfinite, overrides=overrides)
    model = VisionTransformer(config)
    model.load_state_dict({k: to_torch(state.pop(k)) for k in list(state)}, strict=True)
    return config, model.eval()
