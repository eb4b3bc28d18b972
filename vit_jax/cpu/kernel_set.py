"""The XLA:CPU kernels: the reference model's function in forms XLA:CPU runs faster.

Chosen by `ViTConfig(kernels='cpu')` (`--kernels cpu`, or `auto` on a CPU
backend). Every op computes what the reference op computes (tests/test_kernels.py),
with a hand-written backward pass where autodiff's program is slow or keeps
too much on XLA:CPU; hence reverse-mode autodiff only. Why each form:

- projections as 2-D products with their own backward (matmul.py);
- q/k/v with one input-gradient product (`shared_input_projections`);
- LayerNorm keeping only the input and two numbers per row (layer_norm.py);
- attention that recomputes its probabilities in the backward pass (attention.py);
- GELU rematerialised, and optionally its output not kept for Dense_1 (`recompute_gelu`,
  a config option of these kernels only);
- mean pooling as a sum of x / n and the final norm on the class token alone,
  forms oneDNN's matmul fusion compiles (onednn.py).

docs/performance.md holds the measurements behind each choice.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.config import ViTConfig
from vit_jax.cpu import attention
from vit_jax.cpu.autodiff import reverse_mode_only
from vit_jax.cpu.layer_norm import LayerNorm
from vit_jax.cpu.matmul import gelu_projection, shared_input_projections, token_dot_general
from vit_jax.kernels import Kernels, Layer, activation

Array = jax.Array


class ProjectionParams(nn.Module):
    """The kernel and bias an `nn.DenseGeneral(features)` over the last input axis
    creates (same names, shapes, initial values), returned unapplied."""

    features: tuple[int, ...]
    use_bias: bool = True
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array | None]:
        out_features = math.prod(self.features)

        def kernel_init(rng, shape, dtype):  # DenseGeneral initialises the (in, out) matrix
            return self.kernel_init(rng, (in_features, out_features), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, (in_features, *self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, self.features, self.param_dtype) if self.use_bias else None
        return kernel, bias


def _params_of(layer: Layer, in_features: int) -> tuple[Array, Array | None, jnp.dtype]:
    """(kernel, bias, compute dtype) of the Dense/DenseGeneral `layer` (a partial), created under its name."""
    kw = dict(layer.keywords)
    features = kw.get("features", layer.args[0] if layer.args else None)
    features = tuple(np.atleast_1d(features).tolist())
    defaults = ProjectionParams.__dataclass_fields__
    kernel, bias = ProjectionParams(
        features,
        use_bias=kw.get("use_bias", True),
        param_dtype=kw.get("param_dtype", jnp.float32),
        kernel_init=kw.get("kernel_init", defaults["kernel_init"].default),
        bias_init=kw.get("bias_init", defaults["bias_init"].default),
        name=kw["name"],
    )(in_features)
    return kernel, bias, jnp.dtype(kw.get("dtype") or jnp.float32)


def project(x: Array, layers: Sequence[Layer]) -> list[Array]:
    """Several projections of `x`; their backward pass shares one input-gradient product."""
    params = [_params_of(layer, x.shape[-1]) for layer in layers]
    dtype = params[0][2]
    outs = shared_input_projections(x.astype(dtype), [kernel.astype(dtype) for kernel, _, _ in params])
    return [y if bias is None else y + bias.astype(dtype) for y, (_, bias, _) in zip(outs, params)]


def gelu_dense(x: Array, layer: Layer, approximate: bool) -> Array:
    """`layer(gelu(x))`, GELU's output recomputed in the backward pass instead of kept."""
    kernel, bias, dtype = _params_of(layer, x.shape[-1])
    y = gelu_projection(x.astype(dtype), kernel.astype(dtype), approximate=approximate)
    return y if bias is None else y + bias.astype(dtype)


def _activation(c, x: Array) -> Array:
    # Rematerialised: the backward pass keeps GELU's input only, not every
    # elementwise temporary of the formula.
    return jax.checkpoint(functools.partial(activation, c))(x)


def mlp_out(c: ViTConfig, x: Array, dense_1: Layer, dropout) -> Array:
    """GELU, dropout, Dense_1, dropout, as the reference's; with `recompute_gelu` GELU and Dense_1 are one op
    (the config allows it only at dropout 0, so the dropouts it skips are identities)."""
    if c.recompute_gelu:  # erf or tanh only (the config refuses it for 'quick')
        return reverse_mode_only(gelu_dense)(x, dense_1, c.gelu == "tanh")
    return dropout(dense_1()(dropout(_activation(c, x))))


def final_norm(x: Array, norm, head_tokens: int) -> Array:
    # XLA:CPU otherwise fused the last block and an all-token norm into one slow kernel.
    return norm(x[:, :head_tokens]) if head_tokens else norm(x)


CPU_KERNELS = Kernels(
    name="cpu",
    layer_norm=LayerNorm,
    dot_general=reverse_mode_only(token_dot_general),
    project=reverse_mode_only(project),
    attention=reverse_mode_only(attention.attention),
    mlp_out=mlp_out,
    # The mean as a sum of x / n, the scaling inside the reduction: a separate
    # `* 1/n` before the head's product is a form oneDNN cannot compile.
    mean_tokens=lambda x: jnp.sum(x * (1.0 / x.shape[1]), axis=1),
    final_norm=final_norm,
)
