"""Multihead attention pooling (big_vision's MAPHead; SigLIP's head, `classifier='map'`).

A learned probe (1, 1, D) attends over the tokens with its own q/k/v/out projections (`num_heads` heads,
q scaled by 1 / sqrt(head_dim)); then LayerNorm and an MLP, added back (a residual). Parameter names are
big_vision's: MAPHead_0/probe, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_0, MlpBlock_0.
Returns (pooled (batch, D), the probe's attention output (batch, D)) so the model reports both.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.attention import explicit_attention
from vit_jax.config import ViTConfig
from vit_jax.kernel_sets import kernels_for

Array = jax.Array


class MAPHead(nn.Module):
    config: ViTConfig
    mlp: type[nn.Module]  # the blocks' GELU MLP (vit_jax.model.MlpBlock), passed in to keep imports one-way

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        c = self.config
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, c.hidden_size), param_dtype)
        probe = jnp.tile(probe.astype(dtype), (x.shape[0], 1, 1))
        attn = ProbeAttention(c, name="MultiHeadDotProductAttention_0")(probe, x)
        y = kernels_for(c).layer_norm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                                      name="LayerNorm_0")(attn)
        out = attn + self.mlp(c.replace(mlp_type="gelu", mlp_norm=False), name="MlpBlock_0")(y)
        return out[:, 0], attn[:, 0]


class ProbeAttention(nn.Module):
    """Cross-attention of the probe over the tokens, with Flax MultiHeadDotProductAttention's parameters."""

    config: ViTConfig

    @nn.compact
    def __call__(self, probe: Array, x: Array) -> Array:
        c = self.config
        dense = functools.partial(nn.DenseGeneral, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                                  kernel_init=nn.initializers.xavier_uniform())
        heads = (c.num_heads, c.hidden_size // c.num_heads)
        q = dense(heads, name="query")(probe)
        k, v = dense(heads, name="key")(x), dense(heads, name="value")(x)
        out, _ = explicit_attention(q, k, v)  # softmax(q k / sqrt(head_dim)) v, as big_vision's
        return dense(c.hidden_size, axis=(-2, -1), name="out")(out)
