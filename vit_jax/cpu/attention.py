"""The CPU kernels' attention cores, softmax(q k^T / sqrt(d)) v.

- `recompute_attention`: exact attention whose backward pass recomputes the
  probabilities from q, k and the saved log-sum-exp (as fused GPU kernels do)
  instead of keeping a (batch, heads, seq, seq) buffer per layer.
- `explicit_attention`: einsum + softmax returning the probabilities, with the
  output normalised after its product with v (a form oneDNN can compile).

Both take and return (batch, seq, heads, head_dim); softmax statistics are
kept in float32 (float64 for float64 inputs, so reference runs stay exact).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vit_jax.cpu.ordering import after

Array = jax.Array


def _stats_dtype(x: Array):
    """float32 for bf16/f16/f32 inputs; float64 stays float64 (exact reference runs)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _scores(q: Array, k: Array, spec: str = "bqhd,bkhd->bhqk", scale: bool = True) -> Array:
    """Scaled logits (batch, heads, q, k) in the statistics dtype; `spec` names the layout.

    The product is scaled, not q: the product's operands stay as they are,
    which XLA:CPU's oneDNN path needs (vit_jax/cpu/onednn.py).
    """
    scores = jnp.einsum(spec, q, k, preferred_element_type=_stats_dtype(q))
    return scores * (1.0 / math.sqrt(q.shape[-1])) if scale else scores


def _softmax_parts(scores: Array) -> tuple[Array, Array, Array]:
    """(exp(scores - row max), its row sums, the row max): a softmax before its division."""
    row_max = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    unnormalised = jnp.exp(scores - row_max)  # the one pass of exp over (seq, seq)
    return unnormalised, jnp.sum(unnormalised, axis=-1, keepdims=True), row_max


def explicit_attention(q: Array, k: Array, v: Array) -> tuple[Array, Array]:
    """(output, probabilities); probabilities in the input dtype.

    The output is normalised after its product with v, which therefore reads
    the exponentials as they are (oneDNN cannot compile a product whose
    operand is computed in the same fusion).
    """
    unnormalised, row_sum, _ = _softmax_parts(_scores(q, k))
    probs = (unnormalised / row_sum).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bhqd", unnormalised.astype(v.dtype), v, preferred_element_type=row_sum.dtype)
    return jnp.swapaxes(out / row_sum, 1, 2).astype(q.dtype), probs


# The recompute core works in (batch, heads, seq, head_dim): every product is
# then a plain batched matmul with leading batch dimensions, which XLA:CPU hands
# to its matmul library without (seq, seq)-sized layout copies.


def _scores_bhsd(q: Array, k: Array, scale: bool = True) -> Array:
    return _scores(q, k, "bhqd,bhkd->bhqk", scale)


def _to_bhsd(x: Array) -> Array:
    return jnp.swapaxes(x, 1, 2)


def _exact_scale(head_dim: int) -> float | None:
    """1/sqrt(head_dim) when it is a power of two (head_dim 4, 16, 64, 256: every
    official preset but H/14), else None. Multiplying by it is then exact, so it
    can go on q (or on a product's output) instead of on the scores with the
    same bits."""
    scale = 1.0 / math.sqrt(head_dim)
    return scale if math.frexp(scale)[0] == 0.5 else None


@jax.custom_vjp
def recompute_attention(q: Array, k: Array, v: Array) -> Array:
    return _recompute_fwd(q, k, v)[0]


def _recompute_fwd(q, k, v):
    # With an exact scale, q is scaled inside its transposition (a copy that
    # runs anyway) rather than the (seq, seq) scores, a broadcast XLA:CPU
    # materialises.
    scale = _exact_scale(q.shape[-1])
    qh = _to_bhsd(q if scale is None else q * scale)
    kh, vh = _to_bhsd(k), _to_bhsd(v)
    unnormalised, row_sum, row_max = _softmax_parts(_scores_bhsd(qh, kh, scale=scale is None))
    # Normalise after the product: a (seq, head_dim) division, not (seq, seq).
    out = jnp.einsum("bhqk,bhkd->bhqd", unnormalised.astype(vh.dtype), vh, preferred_element_type=row_sum.dtype)
    out = (out / row_sum).astype(q.dtype)
    lse = row_max + jnp.log(row_sum)
    # q is kept as it came in, (batch, seq, heads, dim), and the output not at
    # all: see _recompute_bwd.
    return _to_bhsd(out), (q, kh, vh, lse)


def _recompute_bwd(residuals, d_out):
    q, k, v, lse = residuals
    stats = _stats_dtype(q)
    scale = _exact_scale(q.shape[-1])
    # The recomputation starts from a q that exists only once d_out does
    # (ordering.py), entering through q's transposition (a product operand
    # computed in its own fusion, which oneDNN cannot compile).
    q = after(q, d_out)
    q = _to_bhsd(q if scale is None else q * scale)
    d_out = _to_bhsd(d_out)
    probs = jnp.exp(_scores_bhsd(q, k, scale=scale is None) - lse)  # float32, recomputed rather than stored
    d_v = jnp.einsum("bhqk,bhqd->bhkd", probs.astype(q.dtype), d_out)
    d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, v, preferred_element_type=stats)
    # softmax backward: dS = P * (dP - rowsum(P * dP)). The usual rowsum(dO * O)
    # needs the output kept from the forward pass, which XLA:CPU kept in a
    # second layout (one more full-width buffer per layer).
    row = jnp.sum(probs * d_probs, axis=-1, keepdims=True)
    d_scores = probs * (d_probs - row)
    if scale is None:
        # q is unscaled here, as the forward's scores were: the 1/sqrt(d) goes
        # into dS (a scale that is not a power of two rounds, so it stays where
        # the forward applied it), and both products take dS as it is.
        d_scores = (d_scores * (1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], stats)))).astype(q.dtype)
        d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores, k)
    else:
        # dS is the gradient of the scores of the scaled q: d_k = dS^T q_scaled,
        # d_q = scale * dS k, the scale on the (seq, dim) product, not on dS.
        d_scores = d_scores.astype(q.dtype)
        d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores, k) * scale
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_scores, q)
    return _to_bhsd(d_q), _to_bhsd(d_k), _to_bhsd(d_v)


recompute_attention.defvjp(_recompute_fwd, _recompute_bwd)


def attention(q: Array, k: Array, v: Array, impl: str = "auto") -> Array:
    """The CPU kernels' attention core without probabilities, by `ViTConfig.attention_impl`."""
    if impl in ("auto", "recompute"):
        return recompute_attention(q, k, v)
    if impl == "explicit":
        return explicit_attention(q, k, v)[0]
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)
