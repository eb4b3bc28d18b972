"""The token-wise projections as 2-D matmuls with a hand-written backward pass.

`token_dot_general` is a drop-in `dot_general` for Flax's `Dense` and
`DenseGeneral`: the (batch, seq, ...) input is folded to (batch * seq, in), the
kernel to (in, out), and the backward pass is the two 2-D products

    d_input  = d_out @ kernel^T          d_kernel = input^T @ d_out

The numbers are those of autodiff through `lax.dot_general`; only the program
changes. Autodiff of the 3-D form contracts the kernel gradient over two axes,
which XLA:CPU ran outside its fast matmul path after a layout copy.

`shared_input_projections` does the same for several projections of one input
(query, key, value), with one input-gradient product for all of them.
`gelu_projection` is the MLP's second layer with GELU in front: its backward
pass recomputes GELU's output instead of keeping it (`recompute_gelu`).

Forms other than "trailing input axes x leading kernel axes, no batch axes",
and calls with a `preferred_element_type`, fall through to `lax.dot_general`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vit_jax.cpu.ordering import after

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
    # GELU runs in pre's own shape and is folded afterwards (a bitcast), which
    # keeps it out of the product's fusion: oneDNN's matmul fusion cannot
    # compile an elementwise operand producer (vit_jax/cpu/onednn.py).
    h = jax.nn.gelu(pre, approximate=approximate)
    return lax.dot_general(_tokens(h), kernel, _MATMUL, precision=precision)


def _gelu_matmul_fwd(pre, kernel, approximate, precision):
    return _gelu_matmul(pre, kernel, approximate, precision), (pre, kernel)


def _gelu_matmul_bwd(approximate, precision, residuals, d_out):
    pre, kernel = residuals
    d_out = d_out.astype(pre.dtype)
    gelu = functools.partial(jax.nn.gelu, approximate=approximate)
    # GELU's output, recomputed for the weight gradient; the dependence on d_out
    # keeps XLA:CPU from computing it in the forward pass (ordering.py).
    h = gelu(after(pre, d_out))
    d_kernel = lax.dot_general(_tokens(h), d_out, _WEIGHT_GRAD, precision=precision)
    d_h = lax.dot_general(d_out, kernel, _INPUT_GRAD, precision=precision)
    # GELU's derivative at a second copy of pre, dependent on d_h: two distinct
    # expressions, each fused whole into its one consumer (shared, XLA:CPU wrote
    # the tanh's or erfc's pieces to memory for both; at pre itself, CSE merged
    # it with the forward's GELU).
    _, gelu_vjp = jax.vjp(gelu, after(pre, d_h))
    (d_pre,) = gelu_vjp(d_h.reshape(pre.shape))
    return d_pre, d_kernel.astype(kernel.dtype)


_gelu_matmul.defvjp(_gelu_matmul_fwd, _gelu_matmul_bwd)


def gelu_projection(pre: Array, kernel: Array, approximate: bool, precision=None) -> Array:
    """gelu(pre) projected by `kernel` (in, out), contracting pre's last axis; no bias.

    The numbers of `token_dot_general(jax.nn.gelu(pre), kernel, ...)`, forward
    and backward, but only GELU's input is kept for the backward pass; its
    output is recomputed there (one MLP-width buffer less per block, for one
    more GELU evaluation). `pre` must keep a token axis besides the feature
    axis: GELU runs in that shape and the fold to 2-D follows.
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
