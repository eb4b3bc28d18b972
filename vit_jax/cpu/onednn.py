"""Opt-in oneDNN matmuls for XLA:CPU (`--cpu-matmuls onednn`).

jaxlib 0.10's XLA:CPU hands float32 products to YNNPACK or Eigen; behind
experimental flags it hands them to oneDNN instead, which runs the ViT's
batched attention and weight-gradient products much faster on x86
(docs/performance.md):

    --xla_cpu_use_onednn=true
    --xla_cpu_experimental_onednn_fusion_type=dot     products to oneDNN
    --xla_cpu_experimental_ynn_fusion_type=reduce     YNNPACK keeps the reductions

They must be in XLA_FLAGS before JAX starts its CPU backend:
`enable_onednn_matmuls()` at the top of a program.

Known failures of these experimental flags, which the CPU kernels avoid:
- a oneDNN graph holding two products whose results are added, or a product
  with an operand computed in the same fusion (e.g. `(q * scale) @ k^T`),
  fails to compile ("partition compile failed") and the process dies;
- an executable freed while it still runs aborts the process ("Check failed:
  available_.size() == num_created_"): keep a compiled function alive until
  its results are ready (vit_jax.model.init_params and the parity harness wait for theirs).
tests/test_cpu_onednn.py compiles and runs the configurations we ship under
these flags; the reference kernels are not checked against them.
"""

from __future__ import annotations

import os

ONEDNN_XLA_FLAGS = (
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_fusion_type=dot",
    "--xla_cpu_experimental_ynn_fusion_type=reduce",
)
CHOICES = ("xla", "onednn")


def _flag_names(flags: str) -> set[str]:
    return {f.split("=", 1)[0] for f in flags.split()}


def with_onednn_flags(xla_flags: str) -> str:
    """`xla_flags` plus the oneDNN flags; a flag the caller already set is kept as set."""
    present = _flag_names(xla_flags)
    extra = [f for f in ONEDNN_XLA_FLAGS if f.split("=", 1)[0] not in present]
    return " ".join([xla_flags.strip(), *extra]).strip()


def onednn_matmuls_enabled(xla_flags: str | None = None) -> bool:
    """Whether `xla_flags` (default: this process's XLA_FLAGS) turn oneDNN products on."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    settings = dict(f.split("=", 1) if "=" in f else (f, "true") for f in flags.split())
    return settings.get("--xla_cpu_use_onednn", "false").lower() in ("true", "1") and "dot" in settings.get(
        "--xla_cpu_experimental_onednn_fusion_type", ""
    ).split(",")


def enable_onednn_matmuls() -> None:
    """Turn oneDNN products on for this process (XLA_FLAGS); before JAX's backend starts."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "enable_onednn_matmuls() must run before JAX initialises its backends (before the first "
            "array, jit call or jax.devices()); XLA reads XLA_FLAGS only then. Call it at the top of "
            "the program, or set XLA_FLAGS='" + " ".join(ONEDNN_XLA_FLAGS) + "' in the environment."
        )
    os.environ["XLA_FLAGS"] = with_onednn_flags(os.environ.get("XLA_FLAGS", ""))


def select(choice: str) -> None:
    """Apply a `--cpu-matmuls` choice: 'onednn' turns oneDNN on, 'xla' leaves XLA's default."""
    if choice not in CHOICES:
        raise ValueError(f"cpu matmuls must be one of {CHOICES}, got {choice!r}")
    if choice == "onednn":
        enable_onednn_matmuls()
