"""The attention core, softmax(q k^T / sqrt(head_dim)) v, as the reference model computes it.

q, k, v are (batch, seq, heads, head_dim). q is scaled before its product with
k (as Flax's `dot_product_attention` does); logits and softmax run in float32
for bf16/f16/f32 inputs (float64 for float64), and the probabilities are cast
to the input dtype for their product with v.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def attention_logits(q: Array, k: Array) -> Array:
    """(batch, heads, q, k) logits q.k / sqrt(head_dim), in float32 (float64 for float64 inputs)."""
    stats = jnp.promote_types(q.dtype, jnp.float32)
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)  # a (seq, dim) product, not the (seq, seq) logits
    return jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=stats)


def attend(probs: Array, v: Array) -> Array:
    """The probabilities' weighted sum of v, (batch, seq, heads, head_dim)."""
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def explicit_attention(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """(output, probabilities (batch, heads, q, k) in the input dtype)."""
    probs = jax.nn.softmax(attention_logits(q, k), axis=-1).astype(v.dtype)
    return attend(probs, v), probs


def dot_product_attention(q: Array, k: Array, v: Array, impl: str = "auto") -> Array:
    """The core without probabilities, by `ViTConfig.attention_impl`.

    'auto' is `jax.nn.dot_product_attention` on a GPU, where it can run cuDNN's
    fused kernel, and the explicit form elsewhere: XLA compiles the two to the
    same einsums and softmax, and the explicit one, q scaled first, ran faster
    on XLA:CPU (docs/performance.md). 'xla' and 'cudnn' force the library call.
    """
    # jax.nn.dot_product_attention runs its softmax in float32 whatever the
    # input; float64 runs (the parity harness's exact references) stay float64.
    if impl == "explicit" or q.dtype == jnp.float64 or (impl == "auto" and jax.default_backend() != "gpu"):
        return explicit_attention(q, k, v)[0]
    return jax.nn.dot_product_attention(q, k, v, implementation=None if impl == "auto" else impl)
