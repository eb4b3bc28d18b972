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

Array = jax.Array

_MATMUL = (((1,), (0,)), ((), ()))  # (m, k) x (k, n)
_WEIGHT_GRAD = (((0,), (0,)), ((), ()))  # (m, k) x (m, n) -> (k, n)


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
    d_x = lax.dot_general(d_out, kernel, (((1,), (1,)), ((), ())), precision=precision)
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
    x2 = x.reshape(-1, features_in)
    outs = _shared_input_matmuls(x2, tuple(k.reshape(features_in, -1) for k in kernels), precision)
    return [o.reshape(*x.shape[:-1], *k.shape[1:]) for o, k in zip(outs, kernels)]


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
