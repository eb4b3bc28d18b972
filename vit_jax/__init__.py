"""Vision Transformer in JAX/Flax with Google-compatible parameter names."""

from vit_jax.config import PRESETS, ConfigError, ViTConfig, get_config, list_presets
from vit_jax.model import VisionTransformer, count_params, init_params, param_shapes
from vit_jax.params import resize_params, stack_block_params, to_layout, unstack_block_params
from vit_jax.posemb import resize_pos_embed, sincos_2d
from vit_jax.pretrained import load_pretrained

__all__ = [
    "PRESETS",
    "ConfigError",
    "ViTConfig",
    "VisionTransformer",
    "count_params",
    "get_config",
    "init_params",
    "list_presets",
    "load_pretrained",
    "param_shapes",
    "resize_params",
    "resize_pos_embed",
    "sincos_2d",
    "stack_block_params",
    "summary",
    "to_layout",
    "unstack_block_params",
]


def __getattr__(name):
    # Imported lazily so that `python -m vit_jax.model_summary` runs cleanly.
    if name == "summary":
        from vit_jax.model_summary import summary

        return summary
    raise AttributeError(f"module 'vit_jax' has no attribute {name!r}")
