"""Keep a backward pass's recomputation in the backward pass on XLA:CPU.

A hand-written backward pass that recomputes something from forward values
(attention probabilities from q and k, a norm's x_hat) means to keep only the
small inputs until the backward pass. XLA:CPU may schedule such a
recomputation in the forward pass, or merge it with the forward's identical
expression by CSE, and then keep its large result alive across every later
layer; `jax.lax.optimization_barrier` does not prevent it there (XLA:CPU
removes barriers early). A data dependence on the cotangent does.
docs/performance.md has the measurements.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def after(xs, cotangent: Array):
    """`xs` (an array or a tuple of them), computable only once `cotangent` is.

    Adds 0 * one element of `cotangent`: the values do not change (a -0.0
    becomes +0.0), and XLA keeps the dependence because 0 * a is NaN for a
    non-finite a. Apply it to the smallest input of a recomputation, not to a
    matmul operand (XLA would fuse the addition into the product, a form
    oneDNN's matmul fusion cannot compile; vit_jax/cpu/onednn.py).
    """
    # Zero in the cotangent's own dtype, then cast: casting first could turn a
    # large finite float32 element into a float16 infinity, and 0 * inf is NaN.
    zero = jnp.reshape(cotangent, (-1,))[0] * jnp.zeros((), cotangent.dtype)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), xs)
