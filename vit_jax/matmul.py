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
from 18.7 to 20.4 img/s with XLA's own matmuls and to 24 img/s with oneDNN's.

Forms other than "trailing input axes x leading kernel axes, no batch axes"
fall through to `lax.dot_general` unchanged.
"""

from __future__ import annotations

import functools
import math

import jax
from jax import lax

Array = jax.Array

_MATMUL = (((1,), (0,)), ((), ()))  # (m, k) x (k, n)
_WEIGHT_GRAD = (((0,), (0,)), ((), ()))  # (m, k) x (m, n) -> (k, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul_2d(x: Array, kernel: Array, precision, preferred_element_type) -> Array:
    return lax.dot_general(x, kernel, _MATMUL, precision=precision, preferred_element_type=preferred_element_type)


def _matmul_2d_fwd(x, kernel, precision, preferred_element_type):
    return _matmul_2d(x, kernel, precision, preferred_element_type), (x, kernel)


def _matmul_2d_bwd(precision, preferred_element_type, residuals, d_out):
    x, kernel = residuals
    d_out = d_out.astype(x.dtype)
    d_x = lax.dot_general(d_out, kernel, (((1,), (1,)), ((), ())), precision=precision)
    d_kernel = lax.dot_general(x, d_out, _WEIGHT_GRAD, precision=precision)
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


_matmul_2d.defvjp(_matmul_2d_fwd, _matmul_2d_bwd)


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
        not lhs_batch
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
    out = _matmul_2d(x, kernel, precision, preferred_element_type)
    return out.reshape(*lead, *features_out)
