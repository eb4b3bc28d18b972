"""Load pretrained ViT weights from any supported checkpoint format in one call.

    config, params = vit_jax.load_pretrained("ViT-B_16.npz", image_size=384, num_classes=10)
    logits = vit_jax.VisionTransformer(config).apply({"params": params}, images)

Formats: Google `.npz`, Flax msgpack or orbax directory, timm-named
`.safetensors`/`.pt`, Hugging Face ViT, torchvision ViT, vit-pytorch (see
`python -m parity convert --help`), and this project's training runs (a
train.py --workdir, its checkpoints/ or one step directory; `step` picks the
checkpoint, by default the best by eval accuracy, else the latest). The
architecture is read from the tensors (for a run, from its config.json);
numerics (GELU form, LayerNorm epsilon, input normalisation) follow the
checkpoint's framework, or the config JSON written beside it by the converter.

This is the one module of vit_jax that sits on top of `parity` (the readers
and the mapping table live there, and parity builds on vit_jax's model
modules). `import vit_jax` does not load it: the package exports
`load_pretrained` lazily, so only a caller of this function pays for parity.
"""

from __future__ import annotations

import os
from typing import Any

from parity.convert import read_flax_params
from vit_jax.config import ViTConfig


def load_pretrained(
    path: str | os.PathLike,
    config: ViTConfig | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    format: str | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[ViTConfig, dict[str, Any]]:
    """(config, Flax params as NumPy arrays) for the checkpoint at `path`.

    `config` (a ViTConfig, a preset name or a config JSON path) fills what the
    tensors do not show; a ViTConfig or JSON also sets numerics and runtime
    options (dtype, scan, remat, dropout), and the params come back in its
    layout (scanned or per-block). `image_size` resizes the position
    embeddings (Google's bilinear resize); `num_classes` replaces the head by a
    fresh zero head; `step` picks a training run's checkpoint; `overrides`
    states config fields outright, as `convert --set` (a vit-pytorch file's
    heads: `format="vit-pytorch", overrides={"num_heads": 8}`). Weights must be
    floating point, and finite unless `allow_nonfinite`. Raises
    `parity.formats.ConversionError` on a bad file.
    """
    return read_flax_params(path, format=format, config=config, image_size=image_size, num_classes=num_classes,
                            step=step, allow_nonfinite=allow_nonfinite, overrides=overrides)
