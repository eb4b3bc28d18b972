"""The seam between the model and how its operations are computed.

`VisionTransformer` takes a few operations from a `Kernels` set chosen by
`ViTConfig.kernels`: 'reference' (plain Flax and JAX, every backend, full JAX
semantics: jvp, vmap, grad of grad) or 'cpu' (vit_jax/cpu: the same function
with hand-written backward passes that XLA:CPU runs faster and in less
memory; reverse-mode autodiff only). tests/test_kernels.py checks that both
compute the same function. Which set a config gets is `vit_jax.kernel_sets.kernels_for`
(this module sits below vit_jax/cpu, which builds its set from `Kernels`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vit_jax.attention import dot_product_attention
from vit_jax.config import KERNELS, ConfigError

Array = jax.Array
Layer = Callable[[], nn.Module]  # a functools.partial of nn.Dense/DenseGeneral, name included


@dataclasses.dataclass(frozen=True)
class Kernels:
    name: str
    layer_norm: Callable[..., nn.Module]  # takes nn.LayerNorm's epsilon, dtype, param_dtype, name
    dot_general: Callable  # lax.dot_general's signature: the blocks' Dense layers use it
    project: Callable[[Array, Sequence[Layer]], list[Array]]  # several layers applied to one input
    attention: Callable[[Array, Array, Array, str], Array]  # the core without probabilities
    # (config, x, Dense_1 layer, dropout) -> the MLP after Dense_0: GELU, dropout, Dense_1, dropout
    mlp_out: Callable[..., Array]
    mean_tokens: Callable[[Array], Array]  # (n, seq, d) -> (n, d)
    # (x, the norm module, how many leading tokens the head reads alone, 0: all) -> what the head reads from
    final_norm: Callable[[Array, Callable[[Array], Array], int], Array]


def activation(c, x: Array) -> Array:
    """The MLP's GELU (`config.gelu`): 'exact' (erf), 'tanh', or 'quick' (QuickGELU) x * sigmoid(1.702 x)."""
    if c.gelu == "quick":
        return x * jax.nn.sigmoid(1.702 * x)
    return jax.nn.gelu(x, approximate=c.gelu == "tanh")


def _mlp_out(c, x: Array, dense_1: Layer, dropout: Callable[[Array], Array]) -> Array:
    return dropout(dense_1()(dropout(activation(c, x))))


REFERENCE = Kernels(
    name="reference",
    layer_norm=nn.LayerNorm,
    dot_general=lax.dot_general,
    project=lambda x, layers: [layer()(x) for layer in layers],
    attention=dot_product_attention,
    mlp_out=_mlp_out,
    mean_tokens=lambda x: jnp.mean(x, axis=1),
    final_norm=lambda x, norm, head_tokens: norm(x),
)


def resolve_kernels(choice: str) -> str:
    """A `--kernels` choice as a config value: 'auto' is 'cpu' on JAX's CPU backend, else 'reference'."""
    if choice == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "reference"
    if choice not in KERNELS:
        raise ConfigError(f"kernels {choice!r} is not one of {('auto', *KERNELS)}")
    return choice
