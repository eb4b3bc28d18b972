"""The model's heads: pooling the tokens (`classifier`), fc_norm, pre-logits, the classifier (and distillation) head.

`head_output` creates its modules in the calling module (the VisionTransformer), so their names stay at the top
of the tree: MAPHead_0, fc_norm, pre_logits, head, head_dist.

`MAPHead` is multihead attention pooling (big_vision's MAPHead, `classifier='map'`): a learned
probe (1, 1, D) attends over the tokens with its own q/k/v/out projections (`num_heads` heads, q scaled by
1 / sqrt(head_dim)); then LayerNorm and an MLP, added back (a residual). Parameter names are big_vision's:
MAPHead_0/probe, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_0, MlpBlock_0.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.attention import explicit_attention
from vit_jax.config import ViTConfig
from vit_jax.kernel_sets import kernels_for, layer_norm

Array = jax.Array
Intermediates = dict[str, Array]


def head_output(c: ViTConfig, x: Array, mlp: type[nn.Module]) -> tuple[Array, Intermediates]:
    """The encoder's tokens -> logits (or the pooled features when num_classes == 0), and the head's intermediates.

    `mlp` is the blocks' GELU MLP (vit_jax.model.MlpBlock) for the MAP head, passed in to keep imports one-way.
    """
    inter: Intermediates = {}
    if c.classifier == "token":
        x = x[:, 0] if not c.distilled else x[:, :2]  # class (and distillation) token
    elif c.classifier in ("gap", "token_gap"):
        x = kernels_for(c).mean_tokens(x[:, c.num_prefix_tokens:])  # patch tokens only
    elif c.classifier == "map":  # a learned probe attends over the patch tokens
        x, pool_attn = MAPHead(c, mlp, name="MAPHead_0")(x[:, c.num_prefix_tokens:])
        inter.update({"pool.attn": pool_attn, "pool": x})
    if c.fc_norm:
        x = layer_norm(c, "fc_norm")(x)
        inter["norm"] = x
    if c.representation_size is not None:
        x = nn.Dense(c.representation_size, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                     name="pre_logits")(x)
        x = jnp.tanh(x)
    inter["pre_logits"] = x
    if c.distilled and not c.num_classes:  # features: the mean of the two tokens (timm's forward_head)
        x = (x[:, 0] + x[:, 1]) / 2
    if c.num_classes:
        x = class_heads(c, x)
        inter["logits"] = x
    return x, inter


def class_heads(c: ViTConfig, x: Array) -> Array:
    """The classifier; distilled: the mean of the class head and the distillation head (at inference)."""
    head = functools.partial(
        nn.Dense, c.num_classes, use_bias=c.head_bias, dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype),
        kernel_init=nn.initializers.zeros if c.head_zero_init else nn.initializers.lecun_normal(),
        bias_init=nn.initializers.constant(c.head_bias_init),
    )
    if not c.distilled:
        return head(name="head")(x)
    return (head(name="head")(x[:, 0]) + head(name="head_dist")(x[:, 1])) / 2


class MAPHead(nn.Module):
    """Returns (pooled (batch, D), the probe's attention output (batch, D)) so the model reports both."""

    config: ViTConfig
    mlp: type[nn.Module]  # the blocks' GELU MLP (vit_jax.model.MlpBlock), passed in to keep imports one-way

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        c = self.config
        dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, c.hidden_size), param_dtype)
        probe = jnp.tile(probe.astype(dtype), (x.shape[0], 1, 1))
        attn = ProbeAttention(c, name="MultiHeadDotProductAttention_0")(probe, x)
        y = layer_norm(c, "LayerNorm_0")(attn)
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
