"""Which malloc serves this process, and why it matters for XLA:CPU speed.

XLA:CPU allocates each executable's temporary buffer (1.4 GB for a ViT-Ti/16
train step at batch 32) with the C library's allocator on every call. glibc's
malloc serves a request that large with a fresh `mmap` and gives it back with
`munmap` when the call ends, so the next call touches every page again: a page
fault and a page of zeroes written by the kernel for each 4 KiB. Measured on a
2-core Xeon: 340,000 page faults and ~0.5 s of system time per Ti/16 train
step, and a 64 MB elementwise pass at 4.5 GB/s instead of 12.6 GB/s.

Keeping freed memory inside glibc (`mallopt`: one arena, no `mmap`, no
trimming) removes the faults but not for long: a small allocation that lands
in the freed buffer splits it, the heap grows by another buffer, and in a
40-step run the heap reached 10 GB for the 1.4 GB buffer. tcmalloc and
jemalloc keep large free blocks apart and reuse them; told never to return
memory to the system, they hold the step's buffers at a stable size (peak RSS
3.2-3.4 GB vs 2.0 GB with glibc over 30 Ti/16 steps) and the step ran in
1.62-1.66 s instead of ~2.0 s. So, on CPU (Debian/Ubuntu package names):

    apt-get install libtcmalloc-minimal4
    LD_PRELOAD=libtcmalloc_minimal.so.4 TCMALLOC_RELEASE_RATE=0 python train.py ...
    # or: apt-get install libjemalloc2
    LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 python train.py ...

It must be set before the process starts, which is why this module only
reports it (`python -m benchmarks.model_bench` records it next to its figures).
"""

from __future__ import annotations

_KNOWN = ("tcmalloc", "jemalloc", "mimalloc")


def malloc_library() -> str:
    """'tcmalloc', 'jemalloc' or 'mimalloc' when one is loaded into this process, else 'system'."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    for name in _KNOWN:
        if f"lib{name}" in maps:
            return name
    return "system"
