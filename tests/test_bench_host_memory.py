"""benchmarks.host_memory: the malloc library loaded into a process is reported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.host_memory import malloc_library

_PRELOADS = {
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}


def _reported(env: dict) -> str:
    code = "from benchmarks.host_memory import malloc_library; print(malloc_library())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_plain_process_reports_the_system_malloc():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert _reported(env) == "system"
    assert malloc_library() in ("system", *_PRELOADS)


@pytest.mark.parametrize("name", sorted(_PRELOADS))
def test_preloaded_allocator_is_reported(name):
    if not os.path.exists(_PRELOADS[name]):
        pytest.skip(f"{_PRELOADS[name]} is not installed (Debian: libtcmalloc-minimal4 / libjemalloc2)")
    assert _reported({**os.environ, "LD_PRELOAD": _PRELOADS[name]}) == name
