"""Which kernel set a config gets (`ViTConfig.kernels`), and its LayerNorm, for the model and its parts
(embedding, glu, heads).

It sits above vit_jax/cpu, which builds its set from vit_jax.kernels, and imports that set only when a
config asks for it, so a reference model never loads the CPU kernels.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vit_jax.config import ViTConfig
from vit_jax.kernels import REFERENCE, Kernels


def kernels_for(config: ViTConfig) -> Kernels:
    """The operation set `config.kernels` names; the CPU set is imported only when asked for."""
    if config.kernels == "cpu":
        from vit_jax.cpu.kernel_set import CPU_KERNELS

        return CPU_KERNELS
    return REFERENCE


def layer_norm(config: ViTConfig, name: str) -> nn.Module:
    """The config's LayerNorm (epsilon, dtypes) from its kernel set, named `name` in the calling module."""
    return kernels_for(config).layer_norm(epsilon=config.layer_norm_eps, dtype=jnp.dtype(config.dtype),
                                          param_dtype=jnp.dtype(config.param_dtype), name=name)
