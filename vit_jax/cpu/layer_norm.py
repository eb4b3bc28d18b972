"""LayerNorm with a hand-written backward pass, under Flax's parameter names.

Same function and parameters as `nn.LayerNorm` (`scale`, `bias`; statistics
in float32 for bf16/f16 inputs, float64 for float64), with the two-pass
variance mean((x - mean)^2) that PyTorch also computes. The backward pass keeps only the input and two
numbers per row (mean and 1/std) and computes
dx = r * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * scale, in one pass,
as PyTorch's native LayerNorm does; autodiff of the formula on XLA:CPU kept
several normalised copies of the input (docs/performance.md).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.cpu.autodiff import reverse_mode_only
from vit_jax.cpu.ordering import after

Array = jax.Array


def _normalise(x: Array, eps: float) -> tuple[Array, Array, Array]:
    """(x_hat, mean, rstd) over the last axis, in the statistics dtype."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 stats for bf16/f16; float64 stays
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * rstd, mean, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float, out_dtype) -> Array:
    """scale * (x - mean) / sqrt(var + eps) + bias over the last axis, returned as `out_dtype`."""
    return _layer_norm_fwd(x, scale, bias, eps, out_dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, out_dtype):
    x_hat, mean, rstd = _normalise(x, eps)
    stats = x_hat.dtype
    y = x_hat * scale.astype(stats) + bias.astype(stats)
    return y.astype(out_dtype), (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, out_dtype, residuals, dy):
    x, mean, rstd, scale, bias = residuals
    stats = mean.dtype
    dy = dy.astype(stats)
    # Computed only once dy exists (vit_jax/cpu/ordering.py): otherwise XLA:CPU
    # ran x_hat and full-width broadcasts of 1/std and the scale in the forward
    # pass and kept them until here.
    mean, rstd, scale = after((mean, rstd, scale), dy)
    x_hat = (x.astype(stats) - mean) * rstd
    rows = tuple(range(x.ndim - 1))
    d_scale = jnp.sum(dy * x_hat, axis=rows).astype(scale.dtype)
    d_bias = jnp.sum(dy, axis=rows).astype(bias.dtype)
    g = dy * scale.astype(stats)
    mean_g = jnp.mean(g, axis=-1, keepdims=True)
    mean_gx = jnp.mean(g * x_hat, axis=-1, keepdims=True)
    dx = rstd * (g - mean_g - x_hat * mean_gx)
    return dx.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """Drop-in for `nn.LayerNorm` over the last axis (params `scale`, `bias`)."""

    epsilon: float = 1e-6
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        out_dtype = self.dtype or jnp.result_type(x, scale)
        return reverse_mode_only(layer_norm)(x, scale, bias, self.epsilon, jnp.dtype(out_dtype))
