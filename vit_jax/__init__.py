"""Vision Transformer in JAX/Flax with Google-compatible parameter names.

Names are imported on first use, so that `import vit_jax.config` (the torch
twin, data-loader workers) does not pay for importing JAX and Flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "vit_jax.config": ("PRESETS", "ConfigError", "ViTConfig", "get_config", "list_presets"),
    "vit_jax.model": ("VisionTransformer", "apply_with_intermediates", "count_params", "init_params", "param_shapes"),
    "vit_jax.params": ("resize_params", "stack_block_params", "to_layout", "unstack_block_params"),
    "vit_jax.posemb": ("resize_pos_embed", "sincos_2d"),
    "vit_jax.pretrained": ("load_pretrained",),
    "vit_jax.data.preprocess": ("load_transform",),
    "vit_jax.nnx_model": ("nnx_model",),
    "vit_jax.rollout": ("attention_rollout",),
    "vit_jax.model_summary": ("summary",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from vit_jax.config import PRESETS, ConfigError, ViTConfig, get_config, list_presets  # noqa: F401
    from vit_jax.data.preprocess import load_transform  # noqa: F401
    from vit_jax.model import (  # noqa: F401
        VisionTransformer,
        apply_with_intermediates,
        count_params,
        init_params,
        param_shapes,
    )
    from vit_jax.model_summary import summary  # noqa: F401
    from vit_jax.nnx_model import nnx_model  # noqa: F401
    from vit_jax.params import resize_params, stack_block_params, to_layout, unstack_block_params  # noqa: F401
    from vit_jax.posemb import resize_pos_embed, sincos_2d  # noqa: F401
    from vit_jax.pretrained import load_pretrained  # noqa: F401
    from vit_jax.rollout import attention_rollout  # noqa: F401


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'vit_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
