"""vit_jax.host_memory: freed large buffers are reused without new page faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from vit_jax.host_memory import keep_freed_memory
    took = keep_freed_memory() if sys.argv[1] == "keep" else None
    import ctypes, ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def touch():
        # As XLA:CPU allocates a step's temporary buffer: plain malloc (numpy would
        # ask for huge pages), far above glibc's mmap threshold, written, freed.
        size = 256 << 20
        buffer = libc.malloc(size)
        ctypes.memset(buffer, 1, size)
        libc.free(buffer)

    touch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"took": took, "faults": faults}))
    """
)


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_second_large_allocation_reuses_mapped_pages():
    default = _faults("default")
    kept = _faults("keep")
    if not kept["took"]:
        pytest.skip("not glibc: keep_freed_memory is a no-op here")
    pages = (256 << 20) // 4096
    # glibc by default unmaps the freed buffer, so every page faults again ...
    assert default["faults"] > pages // 2, default
    # ... and keeps it mapped after keep_freed_memory().
    assert kept["faults"] < pages // 100, kept
