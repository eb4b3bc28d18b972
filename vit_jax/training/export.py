"""--export-torch: a run's final params as a timm-named safetensors file, with its ViTConfig beside it."""

from __future__ import annotations

import os
from typing import Any

from vit_jax.config import ViTConfig


def export_torch(params: Any, model: ViTConfig, path: str, overwrite: bool = False) -> str:
    """The params as a timm-named safetensors file, with the ViTConfig JSON beside it (x.safetensors.json)."""
    from vit_jax.formats.base import atomic_outputs, config_sidecar
    from vit_jax.formats.mapping import flax_to_torch
    from vit_jax.formats.torch_sd import write_file

    tensors = flax_to_torch(params, model)
    with atomic_outputs(path, config_sidecar(path, is_dir=False), overwrite=overwrite) as (weights, sidecar):
        write_file(weights, tensors, path)
        sidecar.write_text(model.to_json())
    return os.path.abspath(path)
