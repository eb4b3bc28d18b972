"""Several train.py runs in one process (one JAX start for many meshes): `python tests/sharded_runs.py SPEC OUT`.

SPEC is a JSON list of [name, argv]; OUT receives {name: {"code": exit status,
"stderr": its last 3000 characters, "seconds": wall time}}. The tests start it
with fake CPU devices (XLA_FLAGS), which only a fresh process can have.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time


def main(spec_path: str, out_path: str) -> int:
    from vit_jax import train_cli as train

    with open(spec_path) as f:
        spec = json.load(f)
    results = {}
    for name, argv in spec:
        err = io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = train.main(argv)
        results[name] = {"code": code, "stderr": err.getvalue()[-3000:], "seconds": time.perf_counter() - started}
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
