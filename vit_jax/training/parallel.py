"""Data parallelism over every device of every process: `jit` with a mesh, or `pmap`.

`jit` (the default): one program over a 1-D `Mesh` of all global devices; the
batch is a global array sharded along its first axis (built from each
process's local rows with `jax.make_array_from_process_local_data`), the
state is replicated, and XLA inserts the gradient all-reduce.

`pmap`: the same step mapped over the local devices with an explicit
`pmean`; each process feeds a (local_devices, per_device_batch, ...) array.

Both compute the mean over the same global batch, so their loss curves agree
to float tolerance (dropout and mixup draw per-device keys under pmap, so they
are the same in distribution, not bit for bit).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax.training.state import TrainState
from vit_jax.training.steps import eval_step, train_step

MODES = ("jit", "pmap")
AXIS = "data"


class ParallelError(ValueError):
    """A batch size or device set that data parallelism cannot use."""


def initialize_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process job (no-op when no coordinator is given).

    On CPU the cross-process collectives go through gloo; GPU and TPU
    backends bring their own and ignore this setting.
    """
    if coordinator_address is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ParallelError("--num-processes/--process-id need --coordinator-address (host:port of process 0)")
        return
    if num_processes is None or process_id is None:
        raise ParallelError("--coordinator-address needs both --num-processes and --process-id")
    if not 0 <= process_id < num_processes:
        raise ParallelError(f"--process-id {process_id} is not in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


class DataParallel:
    """Places state and batches on devices and runs the compiled steps."""

    def __init__(self, mode: str, global_batch_size: int, eval_batch_size: int, accum_steps: int = 1):
        if mode not in MODES:
            raise ParallelError(f"--parallel {mode!r} is not one of {MODES}")
        self.mode = mode
        self.num_devices = jax.device_count()
        self.num_local_devices = jax.local_device_count()
        self.num_processes = jax.process_count()
        for name, size in (("--batch-size", global_batch_size), ("--eval-batch-size", eval_batch_size)):
            if size <= 0 or size % self.num_devices:
                raise ParallelError(
                    f"{name} {size} is not divisible by the number of devices ({self.num_devices}); "
                    f"use a multiple of {self.num_devices}"
                )
        per_device = global_batch_size // self.num_devices
        if accum_steps < 1 or per_device % accum_steps:
            raise ParallelError(
                f"--accum-steps {accum_steps} must divide the per-device batch "
                f"({global_batch_size} / {self.num_devices} devices = {per_device})"
            )
        self.process_batch_size = global_batch_size // self.num_processes
        self.process_eval_batch_size = eval_batch_size // self.num_processes
        if mode == "jit":
            self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            self.sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))
        else:
            self.mesh = Mesh(np.asarray(jax.local_devices()), (AXIS,))
            self.sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))

    # -- placement --------------------------------------------------------
    def put_state(self, state: Any) -> Any:
        """Host (NumPy or single-device) state -> replicated on every device."""
        if self.mode == "jit":
            def replicate(x):
                return jax.make_array_from_callback(np.shape(x), self.replicated, lambda _: np.asarray(x))

            return jax.tree.map(replicate, state)
        n = self.num_local_devices
        return jax.device_put(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), state),
                              self.sharded)

    def host_state(self, state: Any) -> Any:
        """Replicated device state -> one NumPy copy (for checkpoints and export)."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], state)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of the global batch -> device arrays."""
        if self.mode == "jit":
            return {k: jax.make_array_from_process_local_data(self.sharded, np.asarray(v)) for k, v in batch.items()}
        n = self.num_local_devices
        return {k: np.asarray(v).reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in batch.items()}

    def host_metrics(self, metrics: dict[str, jax.Array]) -> dict[str, float]:
        if self.mode == "jit":
            return {k: float(np.asarray(v.addressable_data(0))) for k, v in metrics.items()}
        return {k: float(np.asarray(v.addressable_data(0)).reshape(-1)[0]) for k, v in metrics.items()}

    # -- compiled steps ---------------------------------------------------
    def compile_train_step(self, **step_kwargs) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        if self.mode == "jit":
            fn = functools.partial(train_step, **step_kwargs)
            return jax.jit(
                fn,
                in_shardings=(self.replicated, self.sharded),
                out_shardings=(self.replicated, self.replicated),
                donate_argnums=0,
            )
        fn = functools.partial(train_step, axis_name=AXIS, **step_kwargs)
        return jax.pmap(fn, axis_name=AXIS, donate_argnums=0)

    def compile_eval_step(self, apply_fn: Callable[..., jax.Array]) -> Callable[[Any, dict], dict]:
        if self.mode == "jit":
            fn = functools.partial(eval_step, apply_fn=apply_fn)
            return jax.jit(fn, in_shardings=(self.replicated, self.sharded), out_shardings=self.replicated)
        return jax.pmap(functools.partial(eval_step, apply_fn=apply_fn, axis_name=AXIS), axis_name=AXIS)
