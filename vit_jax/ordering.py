"""Keep a backward pass's recomputation in the backward pass on XLA:CPU.

A hand-written backward pass that recomputes something from forward values
(the attention probabilities from q and k, a norm's x_hat from its input)
means to hold only the small inputs of that recomputation until the backward
pass runs. XLA:CPU does not always let it:

- its scheduler may run any instruction as soon as its operands exist, and a
  recomputation that reads forward values only can run in the forward pass;
  its result then stays live across all later layers;
- common-subexpression elimination merges a recomputed product with the
  forward's identical one, whose result is then kept instead;
- `jax.lax.optimization_barrier`, JAX's tool against both, is removed early in
  XLA:CPU's pipeline (OptimizationBarrierExpander) and orders nothing there;
  `jax.checkpoint` (`nn.remat`) relies on it, so a rematerialised layer of an
  unrolled model can end up computed twice in the forward pass.

In the ViT-B/16 b32 train step the attention probabilities, each norm's
x_hat and full-width broadcasts of its 1/std and scale were computed in the
forward pass and held until the backward pass. With the dependence below in
the attention core and the norm (and the norm no longer under `nn.remat`),
XLA's temp allocation for that step went from 5,180 to 4,062 MiB, its peak
RSS growth from 6,811 to 5,539-5,658 MiB, and it ran 7% faster (in-process
A/B; 2-core Xeon, system malloc). With the attention output no longer kept
either (`vit_jax.attention._recompute_bwd`): 3,841 MiB temp, 5,413 MiB RSS
growth against the PyTorch twin's 5,420. `vit_jax.matmul.gelu_projection`
(`ViTConfig.recompute_gelu`) uses it for GELU's output as well.

`after(x, cotangent)` returns x with a data dependence on `cotangent`, the
gradient that arrives when the backward pass reaches this layer: x plus zero
times one element of it. The values do not change (x + 0 == x; a -0.0 becomes
+0.0, which compares equal). XLA keeps the dependence because 0 * a is not 0
for a float a that may be NaN or infinite: such a gradient element makes the
whole result NaN, in a step whose weight gradients that element already
makes non-finite. Apply it to the smallest input of a recomputation (per-row
statistics where there are some): the extra work is one scalar product and
an addition that XLA fuses into the recomputation. Not to an operand that a
matmul reads directly: XLA fuses the addition into the product, a form
oneDNN's matmul fusion cannot compile (`vit_jax.cpu_matmuls`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def after(xs, cotangent: Array):
    """`xs` (an array or a tuple of them), computable only once `cotangent` is (see the module docstring)."""
    # Zero in the cotangent's own dtype, then cast: casting first could turn a
    # large finite float32 element into a float16 infinity, and 0 * inf is NaN.
    zero = jnp.reshape(cotangent, (-1,))[0] * jnp.zeros((), cotangent.dtype)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), xs)
