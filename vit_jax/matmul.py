"""The token-wise projections as 2-D matmuls with a hand-written backward pass.

`token_dot_general` is a drop-in `dot_general` for Flax's `Dense` and
`DenseGeneral` (their `dot_general=` argument). A ViT projection contracts the
trailing feature axes of a (batch, seq, ...) input with the leading axes of the
kernel. Here the input is folded to (batch * seq, in) and the kernel to
(in, out) first, and the backward pass is written out as the two products

    d_input  = d_out @ kernel^T          (batch * seq, out) x (out, in)
    d_kernel = input^T @ d_out           (in, batch * seq) x (batch * seq, out)

The numbers are those of autodiff through `lax.dot_general` (same products,
same dtypes); only the program XLA sees changes. Autodiff of the 3-D form
contracts the kernel gradient over two axes (batch, seq) and XLA:CPU then
copied one operand into a transposed layout and ran the product outside its
fast matmul path (the weight-gradient products ran at ~170 GFLOP/s against
~290 for the forward ones, 6304x192x768 float32 on a 2-core Xeon). Written as
one 2-D product over the folded axis, the copies go and, with oneDNN matmuls
(`vit_jax.cpu_matmuls`), so does the slow path: a ViT-Ti/16 train step went
from 18.7 to 20.4-20.9 img/s with XLA's own matmuls (tcmalloc, 2-core
Xeon, alternating runs).

`shared_input_projections` does the same for several projections of one
input (query, key, value), with one input-gradient product for all of them.

`gelu_projection` is the MLP's second layer with the GELU in front of it:
its backward pass recomputes GELU's output for the weight gradient from the
GELU input, which the GELU backward keeps anyway, instead of keeping both
(one MLP-width buffer less per block; see its docstring).

Forms other than "trailing input axes x leading kernel axes, no batch axes",
and calls with a `preferred_element_type`, fall through to `lax.dot_general`
unchanged.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vit_jax.ordering import after

Array = jax.Array

_MATMUL = (((1,), (0,)), ((), ()))  # (m, k) x (k, n)
_WEIGHT_GRAD = (((0,), (0,)), ((), ()))  # (m, k) x (m, n) -> (k, n)
_INPUT_GRAD = (((1,), (1,)), ((), ()))  # (m, n) x (k, n) -> (m, k)


def _tokens(x: Array) -> Array:
    """(..., features) folded to (tokens, features)."""
    return x.reshape(-1, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shared_input_matmuls(x: Array, kernels: tuple[Array, ...], precision) -> tuple[Array, ...]:
    """x (m, k) times each kernel (k, n_i); one kernel is the plain projection."""
    return tuple(lax.dot_general(x, k, _MATMUL, precision=precision) for k in kernels)


def _shared_input_matmuls_fwd(x, kernels, precision):
    return _shared_input_matmuls(x, kernels, precision), (x, kernels)


def _shared_input_matmuls_bwd(precision, residuals, d_outs):
    x, kernels = residuals
    # One product for the input gradient instead of a sum of one per kernel, and
    # one weight-gradient product over the concatenated output gradients.
    d_out = jnp.concatenate([d.astype(x.dtype) for d in d_outs], axis=1)
    kernel = jnp.concatenate(kernels, axis=1)
    d_x = lax.dot_general(d_out, kernel, _INPUT_GRAD, precision=precision)
    d_kernel = lax.dot_general(x, d_out, _WEIGHT_GRAD, precision=precision)
    splits = np.cumsum([k.shape[1] for k in kernels])[:-1]
    d_kernels = tuple(d.astype(k.dtype) for d, k in zip(jnp.split(d_kernel, splits, axis=1), kernels))
    return d_x.astype(x.dtype), d_kernels


_shared_input_matmuls.defvjp(_shared_input_matmuls_fwd, _shared_input_matmuls_bwd)


def shared_input_projections(x: Array, kernels: list[Array], precision=None) -> list[Array]:
    """`x` projected by each kernel (each (in features..., out features...), contracting x's last axis).

    The forward pass runs one product per kernel; the backward pass runs one
    product for the input gradient (over the concatenated kernels) and one for
    all weight gradients, rather than a product per kernel whose input
    gradients are then summed (three products and two additions for q/k/v).
    """
    features_in = x.shape[-1]
    outs = _shared_input_matmuls(_tokens(x), tuple(k.reshape(features_in, -1) for k in kernels), precision)
    return [o.reshape(*x.shape[:-1], *k.shape[1:]) for o, k in zip(outs, kernels)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gelu_matmul(pre: Array, kernel: Array, approximate: bool, precision) -> Array:
    """gelu(pre) (..., k), folded to (m, k), times kernel (k, n)."""
    # GELU runs in pre's own shape and its result is folded afterwards. XLA
    # turns the fold into a bitcast, which keeps the GELU out of the product's
    # fusion: oneDNN's matmul fusion cannot compile an elementwise operand
    # producer ("partition compile failed", vit_jax.cpu_matmuls).
    h = jax.nn.gelu(pre, approximate=approximate)
    return lax.dot_general(_tokens(h), kernel, _MATMUL, precision=precision)


def _gelu_matmul_fwd(pre, kernel, approximate, precision):
    return _gelu_matmul(pre, kernel, approximate, precision), (pre, kernel)


def _gelu_matmul_bwd(approximate, precision, residuals, d_out):
    pre, kernel = residuals
    d_out = d_out.astype(pre.dtype)
    gelu = functools.partial(jax.nn.gelu, approximate=approximate)
    # GELU's output, recomputed for the weight gradient. Without the dependence
    # on d_out XLA:CPU would compute it in the forward pass (or reuse the
    # forward's) and keep it across the later layers (vit_jax.ordering).
    h = gelu(after(pre, d_out))
    d_kernel = lax.dot_general(_tokens(h), d_out, _WEIGHT_GRAD, precision=precision)
    d_h = lax.dot_general(d_out, kernel, _INPUT_GRAD, precision=precision)
    # GELU's derivative at a second copy of pre, dependent on d_h: two distinct
    # expressions, each fused whole into its one consumer. Shared (jax.vjp at
    # the first copy), XLA:CPU wrote the tanh's (or erfc's) costly pieces to
    # memory for both users: the exact GELU's backward took 1.35x as long
    # (ViT-Ti/16 width, micro-benchmark). At pre itself, CSE merged it with the
    # forward's GELU, whose pieces were then kept across layers.
    _, gelu_vjp = jax.vjp(gelu, after(pre, d_h))
    (d_pre,) = gelu_vjp(d_h.reshape(pre.shape))
    return d_pre, d_kernel.astype(kernel.dtype)


_gelu_matmul.defvjp(_gelu_matmul_fwd, _gelu_matmul_bwd)


def gelu_projection(pre: Array, kernel: Array, approximate: bool, precision=None) -> Array:
    """gelu(pre) projected by `kernel` (in, out), contracting pre's last axis; no bias.

    The same numbers as `token_dot_general(jax.nn.gelu(pre), kernel, ...)`,
    forward and backward. What the backward pass keeps differs: the plain form
    keeps GELU's input for GELU's own backward and its output for the
    projection's weight gradient, two buffers of the MLP's width per block.
    Here only the input is kept and the output is recomputed in the backward
    pass: at ViT-B/16 batch 32, 74 MiB less per block (XLA temp of the train
    step 3,739 -> 2,926 MiB with oneDNN's matmuls), for one more GELU
    evaluation and one more write and read of that buffer per block (train
    step 0.96-0.97x on a 2-core Xeon, A/B in one process). The model uses it
    with `ViTConfig.recompute_gelu`.

    `pre` must have a leading token axis besides the feature axis (the model's
    (batch, seq, features)): GELU runs in that shape and the fold to 2-D
    follows, see `_gelu_matmul`.
    """
    features_in = pre.shape[-1]
    out = _gelu_matmul(pre, kernel.reshape(features_in, -1), approximate, precision)
    return out.reshape(*pre.shape[:-1], *kernel.shape[1:])


def token_dot_general(
    lhs: Array,
    rhs: Array,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
) -> Array:
    """`lax.dot_general` with the projection form folded to one 2-D matmul (see the module docstring)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    projection = (
        preferred_element_type is None  # Flax never asks for one; other callers keep lax's semantics
        and not lhs_batch
        and not rhs_batch
        and 0 < n < lhs.ndim
        and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
        and tuple(rhs_contract) == tuple(range(n))
    )
    if not projection:
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type
        )
    lead, features_in, features_out = lhs.shape[: lhs.ndim - n], rhs.shape[:n], rhs.shape[n:]
    x = lhs.reshape(math.prod(lead), math.prod(features_in))
    kernel = rhs.reshape(math.prod(features_in), math.prod(features_out))
    (out,) = _shared_input_matmuls(x, (kernel,), precision)
    return out.reshape(*lead, *features_out)
