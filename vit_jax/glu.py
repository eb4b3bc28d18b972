"""SwiGLU MLPs: silu(gate) * value, then fc2 (`ViTConfig.mlp_type`; the families that use them: vit_jax/families).

    swiglu_packed   Dense_0 (D, 2 x mlp_dim): the first half is the gate (timm SwiGLUPacked / GluMlp gate_last=False)
    swiglu          gate (D, mlp_dim), Dense_0 the value (D, mlp_dim), norm (mlp_norm: a sub-LN)
    both            Dense_1 (mlp_dim, D)
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.config import ViTConfig
from vit_jax.kernel_sets import kernels_for

Array = jax.Array


class SwiGLU(nn.Module):
    config: ViTConfig
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dense = functools.partial(
            nn.Dense, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
            kernel_init=nn.initializers.xavier_uniform(), dot_general=kernels_for(c).dot_general,
        )
        if c.mlp_type == "swiglu_packed":
            gate, value = jnp.split(dense(2 * c.mlp_dim, name="Dense_0")(x), 2, axis=-1)
        else:
            gate, value = dense(c.mlp_dim, name="gate")(x), dense(c.mlp_dim, name="Dense_0")(x)
        x = jax.nn.silu(gate) * value
        if c.mlp_norm:
            x = kernels_for(c).layer_norm(epsilon=c.layer_norm_eps, dtype=jnp.dtype(c.dtype),
                                          param_dtype=jnp.dtype(c.param_dtype), name="norm")(x)
        x = nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
        x = dense(c.hidden_size, name="Dense_1")(x)
        return nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
