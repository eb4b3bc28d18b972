"""`train.py --dry-run`: will this model, batch and mesh fit, before any weight is allocated?

The training state is abstract (`jax.eval_shape`: shapes, dtypes and the
shardings the run would use); the train step is lowered and compiled for it
and for a global batch of the run's size, and XLA's own memory analysis of the
compiled program gives the per-device figures: arguments (this device's
shards of the state and of the batch), outputs (the new state, aliased to the
donated arguments) and temporaries (activations, gradients, collectives'
buffers). Written to `<workdir>/memory.json` and printed as a table.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from vit_jax.training.mesh import bytes_per_device, bytes_total

MEMORY_FILE = "memory.json"
GIB = 2.0**30


def abstract_inputs(run: Any) -> tuple[Any, dict[str, jax.ShapeDtypeStruct]]:
    """(state, batch) as shape structs carrying the shardings the run places them with."""
    parallel = run.parallel
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), run.host_state,
                         parallel.state_sharding)
    height, width = run.model.image_hw
    batch = {
        "image": jax.ShapeDtypeStruct((run.config.batch_size, height, width, run.model.num_channels), np.float32,
                                      sharding=parallel.sharded),
        "label": jax.ShapeDtypeStruct((run.config.batch_size,), np.int32, sharding=parallel.sharded),
    }
    return state, batch


def measure(run: Any, train_step: Callable) -> dict[str, Any]:
    """Compile the train step on abstract inputs; the figures of memory.json."""
    state, batch = abstract_inputs(run)
    started = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_seconds = time.perf_counter() - started
    stats = compiled.memory_analysis()
    shardings = run.parallel.state_sharding
    xla = {name: int(getattr(stats, f"{name}_size_in_bytes")) for name in ("argument", "output", "alias", "temp")}
    # Donated state: the outputs reuse the arguments' buffers (alias); the rest is live at once at the peak.
    xla["peak_estimate"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
    config, model = run.config, run.model
    batch_devices = run.parallel.mesh_shape["data"] * run.parallel.mesh_shape["fsdp"]
    return {
        "model": config.model,
        "num_params": int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(state.params))),
        "image_size": list(model.image_hw),
        "num_classes": model.num_classes,
        "dtype": model.dtype,
        "remat": model.remat,
        "scan": model.scan,
        "batch_size": config.batch_size,
        "batch_per_device": config.batch_size // batch_devices,
        "accum_steps": config.accum_steps,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "mesh": dict(run.parallel.mesh_shape),
        "shard_min_mib": config.shard_min_mib,
        "params_bytes_total": bytes_total(state.params),
        "params_bytes_per_device": bytes_per_device(state.params, shardings.params),
        "opt_state_bytes_total": bytes_total(state.opt_state),
        "opt_state_bytes_per_device": bytes_per_device(state.opt_state, shardings.opt_state),
        "xla_per_device_bytes": xla,
        "compile_seconds": round(compile_seconds, 2),
    }


def table(report: dict[str, Any]) -> str:
    mesh = ",".join(f"{axis}={size}" for axis, size in report["mesh"].items())
    xla = report["xla_per_device_bytes"]
    rows = [
        ("params", report["params_bytes_total"], report["params_bytes_per_device"]),
        ("optimizer state", report["opt_state_bytes_total"], report["opt_state_bytes_per_device"]),
        ("XLA arguments", None, xla["argument"]),
        ("XLA outputs (aliased)", None, xla["output"]),
        ("XLA temporaries", None, xla["temp"]),
        ("XLA peak estimate", None, xla["peak_estimate"]),
    ]
    lines = [f"dry run: {report['model']} ({report['num_params']:,} params, {report['dtype']}"
             f"{', remat' if report['remat'] else ''}{', scan' if report['scan'] else ''}), batch "
             f"{report['batch_size']} ({report['batch_per_device']} per device), mesh {mesh} over "
             f"{report['devices']} {report['backend']} device(s)",
             f"{'':24s}{'total GiB':>12s}{'per device GiB':>16s}"]
    for name, total, per_device in rows:
        lines.append(f"{name:24s}{'' if total is None else f'{total / GIB:.3f}':>12s}{per_device / GIB:16.3f}")
    lines.append(f"compiled in {report['compile_seconds']:.1f} s; peak estimate = arguments + outputs - aliased + "
                 "temporaries")
    return "\n".join(lines)


def dry_run(run: Any, train_step: Callable) -> int:
    """Measure, print the table and write <workdir>/memory.json (process 0); exit status 0."""
    report = measure(run, train_step)
    if run.is_main:
        os.makedirs(run.workdir, exist_ok=True)
        path = os.path.join(run.workdir, MEMORY_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        os.replace(path + ".tmp", path)
        print(table(report))
        print(f"memory       {path}")
    return 0
