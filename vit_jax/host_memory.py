"""Keep freed host memory in the process, so XLA:CPU buffers are not page-faulted anew on every step.

XLA:CPU allocates each executable's temporary buffer (1.4 GB for a ViT-Ti/16
train step at batch 32) with the C library's allocator on every call. glibc
serves a request that large with a fresh `mmap` and gives it back with
`munmap` when the call ends, so the next call touches every page again: a page
fault and a page of zeroes written by the kernel for each 4 KiB. Measured on a
2-core Xeon: 340,000 page faults and ~0.5 s of system time per Ti/16 train
step, and a 64 MB elementwise pass at 4.5 GB/s instead of 12.6 GB/s on one
core.

`keep_freed_memory()` tells glibc to serve every size from its heap (no
per-request `mmap`), from one arena (a thread's own arena could not hold such
a buffer and would fall back to `mmap`), and never to hand freed memory at the
top of the heap back to the system. Freed buffers are then reused by the next
step with their pages still mapped. The cost: the process keeps its peak
memory mapped until it exits, which a training or benchmark process does
anyway; and where a small allocation splits the freed temporary buffer, the
heap grows by another buffer's size once (seen in some runs: one step in five
to ten faults its pages again, then the heap holds both and stops growing;
traced with strace: only `brk` growth, no `munmap` or `madvise`). It changes
nothing numerically.

Call it once, early (before JAX starts its threads), in a process that runs
large jitted steps on the CPU. `python -m vit_jax.bench` does (both frameworks
then run under it; `--no-keep-freed-memory` to compare); library code never
does, and train.py does not either: with the single arena, the default digits
run (a 105k-parameter model, many small allocations from the loader's and
XLA's threads) trained 400 steps in 21 s instead of 14 s. A no-op, returning
False, where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def keep_freed_memory() -> bool:
    """Configure glibc malloc to keep and reuse freed memory; True if it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # only glibc has it; musl and others keep their defaults
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_ARENA_MAX, 1)
    ok &= mallopt(_M_MMAP_MAX, 0)
    ok &= mallopt(_M_TRIM_THRESHOLD, -1)  # -1: never trim (mallopt(3))
    ok &= mallopt(_M_TOP_PAD, 1 << 30)
    return bool(ok)
