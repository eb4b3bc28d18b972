"""The attention core softmax(q k^T / sqrt(d)) v, in the forms the model can use.

- `jax.nn.dot_product_attention` ('xla' / 'cudnn'): the library path; on GPU
  'auto' picks cuDNN fused attention when it applies.
- `recompute_attention`: exact attention whose backward pass recomputes the
  probabilities from q, k and the saved log-sum-exp (as fused kernels do) instead
  of keeping the (batch, heads, seq, seq) probabilities, and intermediate
  logits, of every layer alive until the backward pass. On CPU this is the
  default: it cuts a train step's peak memory and the memory traffic around
  the small attention matmuls.
- `explicit_attention`: einsum + softmax, returning the probabilities (for
  inspection, attention dropout, and as the reference in tests).

All take q, k, v as (batch, seq, heads, head_dim) and return (batch, seq,
heads, head_dim). Softmax statistics are kept in float32 for any input dtype
(float64 for float64 inputs, so float64 reference runs stay exact).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vit_jax.ordering import after

Array = jax.Array


def _stats_dtype(x: Array):
    """float32 for bf16/f16/f32 inputs; float64 stays float64 (exact reference runs)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _scores(q: Array, k: Array, spec: str = "bqhd,bkhd->bhqk", scale: bool = True) -> Array:
    """Scaled logits (batch, heads, q, k) in float32 (float64 for float64 inputs).

    `spec` names the inputs' layout; (batch, seq, heads, dim) by default.
    Flax scales q by 1/sqrt(head_dim) before the product; here the float32
    product is scaled instead. For head_dim 64 (every official preset but
    H/14) the scale is a power of two and the two orders give the same bits;
    otherwise they differ by float32 rounding. Scaling after the product keeps
    the product's operands as they are, which XLA:CPU's oneDNN path needs (it
    cannot compile a product whose operand is computed in the same fusion; see
    `vit_jax.cpu_matmuls`).
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

    The output is normalised after its product with v, which therefore takes
    the softmax's exponentials as they are: a product whose operand is
    computed in the same fusion (here, the division by the row sums) is a form
    XLA:CPU's oneDNN path cannot compile (`vit_jax.cpu_matmuls`).
    """
    unnormalised, row_sum, _ = _softmax_parts(_scores(q, k))
    probs = (unnormalised / row_sum).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bhqd", unnormalised.astype(v.dtype), v, preferred_element_type=row_sum.dtype)
    return jnp.swapaxes(out / row_sum, 1, 2).astype(q.dtype), probs


# The recompute core works in (batch, heads, seq, head_dim) layout. Every
# product is then a plain batched matmul with the batch dimensions leading, which
# XLA:CPU hands to its matmul library as is; in the (batch, seq, heads, dim)
# layout each of the four products and its gradients needs layout copies of
# (batch, heads, seq, seq) size (measured: the S/16 attention core forward 4x
# faster this way, forward + backward ~2x). The transposes in and out are of
# (batch, seq, width) size only.


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
    # With an exact scale, q is scaled, not the (seq, seq) scores: the multiply
    # joins q's transposition to (batch, heads, seq, dim), which runs anyway.
    # On the scores it cost a pass over a materialised (batch, heads, seq, seq)
    # broadcast of the scale: in YNNPACK's fusion at inference (+5% Ti/16
    # inference without it) and as a post-op of oneDNN's product in training.
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
    # (vit_jax.ordering). Without that, XLA:CPU merged the recomputed scores
    # with the forward's and computed these probabilities in the forward
    # pass, keeping a (batch, heads, seq, seq) buffer per layer until here.
    # The dependence (and an exact scale, as in the forward pass) enters
    # through q's transposition to (batch, heads, seq, dim), a copy that runs
    # anyway: on q in that layout, XLA fused it into the product's operand,
    # which oneDNN's matmul fusion cannot compile (`vit_jax.cpu_matmuls`).
    q = after(q, d_out)
    q = _to_bhsd(q if scale is None else q * scale)
    d_out = _to_bhsd(d_out)
    probs = jnp.exp(_scores_bhsd(q, k, scale=scale is None) - lse)  # float32, recomputed rather than stored
    d_v = jnp.einsum("bhqk,bhqd->bhkd", probs.astype(q.dtype), d_out)
    d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, v, preferred_element_type=stats)
    # softmax backward: dS = P * (dP - rowsum(P * dP)). The row sums equal
    # rowsum(dO * O), the usual form, which needs the output kept from the
    # forward pass: XLA:CPU kept it in a second layout besides the one the out
    # projection keeps for its weight gradient, one more full-width buffer per
    # layer (222 MiB in the ViT-B/16 b32 step). This pass over P and dP cost
    # no measurable time (ViT-Ti/16 train step 1.01x, A/B in one process,
    # either matmul library).
    row = jnp.sum(probs * d_probs, axis=-1, keepdims=True)
    d_scores = probs * (d_probs - row)
    if scale is None:
        # q is unscaled here, as the forward's scores were: the 1/sqrt(d) goes
        # into dS (a scale that is not a power of two rounds, so it stays where
        # the forward applied it), and both products take dS as it is.
        d_scores = (d_scores * (1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], stats)))).astype(q.dtype)
        d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores, k)
    else:
        # dS is the gradient of the scores of the scaled q, itself in hand:
        # d_k = dS^T q_scaled, d_q = scale * dS k. On dS the scale was read
        # from a materialised (batch, heads, seq, seq) broadcast, inside
        # YNNPACK's fusion of the softmax backward; on d_q, with oneDNN's
        # matmuls, it is a post-op of the product reading a (batch, heads,
        # seq, dim) one, a third the size at 197 tokens. ViT-Ti/16 b32 train
        # step with both changes (exact scale on q and here): +2.6% with
        # oneDNN's matmuls, +1.5% with XLA's; S/16 +0.7% / +1.4% (A/B in one
        # process, 2-core Xeon); the same bits as before.
        d_scores = d_scores.astype(q.dtype)
        d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores, k) * scale
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_scores, q)
    return _to_bhsd(d_q), _to_bhsd(d_k), _to_bhsd(d_v)


recompute_attention.defvjp(_recompute_fwd, _recompute_bwd)


def attention(q: Array, k: Array, v: Array, impl: str = "auto") -> Array:
    """The attention core without probabilities, by `ViTConfig.attention_impl`."""
    if impl == "explicit":
        return explicit_attention(q, k, v)[0]
    if impl == "recompute" or (impl == "auto" and jax.default_backend() == "cpu"):
        return recompute_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v, implementation=None if impl == "auto" else impl)
