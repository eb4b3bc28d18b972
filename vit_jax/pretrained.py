"""Load pretrained ViT weights from any supported checkpoint format in one call.

    config, params = vit_jax.load_pretrained("ViT-B_16.npz", image_size=384, num_classes=10)
    logits = vit_jax.VisionTransformer(config).apply({"params": params}, images)

Formats: Google `.npz`, Flax msgpack or orbax directory, timm-named
`.safetensors`/`.pt`, Hugging Face ViT, torchvision ViT (see
`python -m parity convert --help`). The architecture is read from the tensors;
numerics (GELU form, LayerNorm epsilon, input normalisation) follow the
checkpoint's framework, or the config JSON written beside it by the converter.
"""

from __future__ import annotations

import os
from typing import Any

from vit_jax.config import ViTConfig


def load_pretrained(
    path: str | os.PathLike,
    config: ViTConfig | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    format: str | None = None,
) -> tuple[ViTConfig, dict[str, Any]]:
    """(config, Flax params as NumPy arrays) for the checkpoint at `path`.

    `config` (a ViTConfig, a preset name or a config JSON path) fills what the
    tensors do not show; a ViTConfig or JSON also sets numerics and runtime
    options (dtype, scan, remat, dropout), and the params come back in its
    layout (scanned or per-block). `image_size` resizes the position
    embeddings (Google's bilinear resize); `num_classes` replaces the head by a
    fresh zero head. Raises `parity.formats.ConversionError` on a bad file.
    """
    from parity.convert import read_flax_params  # parity builds on vit_jax; import at call time

    return read_flax_params(path, format=format, config=config, image_size=image_size, num_classes=num_classes)
