"""Name the `kernels` switch when forward-mode autodiff meets a CPU kernel.

The CPU kernels have hand-written backward passes (`jax.custom_vjp`), which
JAX differentiates in reverse mode only; its own error under `jax.jvp` does
not say which setting to change, and under `jax.jit` comes only when the
program is lowered. Each CPU op therefore looks at its inputs first: a value
being differentiated in forward mode (a JVP tracer, possibly under other
transformations) raises a ForwardModeError that names `kernels`. `jax.grad`
and `jax.vjp` linearize without JVP tracers, so they pass.
"""

from __future__ import annotations

import functools

import jax

MESSAGE = (
    "kernels='cpu' supports reverse-mode autodiff only (jax.grad, jax.vjp): its operations have hand-written "
    "backward passes. For jax.jvp, jax.hessian or jax.jacfwd build the model with kernels='reference' "
    "(same parameters, same function)."
)


class ForwardModeError(TypeError):
    """Forward-mode autodiff (jax.jvp, jax.jacfwd, jax.hessian) reached a CPU kernel."""


def _in_forward_mode(x) -> bool:
    # Walk down the stack of transformations wrapping x: a linearize tracer keeps
    # its primal, a batch tracer its value. Names, not classes: JAX keeps them private.
    for _ in range(64):
        if not isinstance(x, jax.core.Tracer):
            return False
        if type(x).__name__ == "JVPTracer":
            return True
        x = getattr(x, "primal", getattr(x, "val", None))
    return False


def reverse_mode_only(fn):
    """`fn`, refusing forward-mode autodiff with an error that names the `kernels` switch."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if any(_in_forward_mode(leaf) for leaf in jax.tree.leaves((args, kwargs))):
            raise ForwardModeError(MESSAGE)
        try:
            return fn(*args, **kwargs)
        except TypeError as error:  # the forward mode came in another way: JAX's own message, explained
            if "forward-mode" in str(error) and not isinstance(error, ForwardModeError):
                raise ForwardModeError(MESSAGE) from error
            raise

    return wrapped
