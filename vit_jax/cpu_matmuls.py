"""Opt-in oneDNN matmuls for XLA:CPU, and why they are worth it.

jaxlib 0.10's XLA:CPU hands float32 products to YNNPACK (plain 2-D products)
or Eigen. On a 2-core Xeon (AVX-512, AMX) the batched attention products of a
ViT-Ti/16 step at batch 32, (96 x 197 x 64) x (96 x 64 x 197) and the like,
ran at 105-135 GFLOP/s there against 235-290 in PyTorch (oneDNN/MKL). XLA:CPU
can also hand products to oneDNN, behind experimental flags:

    --xla_cpu_use_onednn=true
    --xla_cpu_experimental_onednn_fusion_type=dot     products to oneDNN
    --xla_cpu_experimental_ynn_fusion_type=reduce     YNNPACK keeps the reductions

With them the same attention products ran at 190-300 GFLOP/s and the
weight-gradient products at ~260 instead of ~170. They must be in XLA_FLAGS
before JAX starts its CPU backend: `enable_onednn_matmuls()` at the top of a
program, `--cpu-matmuls onednn` for `train.py` and `python -m vit_jax.bench`.

The flags are experimental in XLA and have three known failures. The pass that
builds a oneDNN graph around each product also takes in neighbouring
elementwise ops, and the graph then fails to compile ("partition compile
failed", after which the process dies with SIGILL) when it holds two products
whose results are added, or a product with an operand computed inside it
(e.g. `(q * scale) @ k^T`). The model avoids both: the query/key/value input
gradient is one product over the concatenated kernels
(`vit_jax.matmul.shared_input_projections`), the attention scale goes on q
inside q's transposition to the core's layout (a copy of its own, not the
product's fusion) or, when it is not a power of two, on the scores
(`vit_jax.attention._recompute_fwd`), and mean pooling sums x / n.
tests/test_cpu_matmuls.py compiles and runs train and inference steps of the
configurations we ship under these flags and compares their numbers with the
default path; other programs may still meet the failure.

A third failure is a race: an executable freed while it still runs (a
`jax.jit` of a temporary function, called and dropped before its result is
ready) aborts the process ("Check failed: available_.size() == num_created_"
in `OneDnnFusionThunk`'s destructor). With XLA's own matmuls the same program
runs. Keep a compiled function alive until its results are ready, as this
project's code does (`model.init_params`, the parity harness); a train step
held for the whole run is safe.
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
