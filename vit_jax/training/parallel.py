"""Data, fully-sharded and tensor parallelism over every device of every process: `jit` on a mesh, or `pmap`.

`jit` (the default): one program over a `Mesh` of all global devices with the
axes ("data", "fsdp", "model") of `--mesh` (default data=-1: every device on
`data`). The batch is a global array split over data x fsdp (built from each
process's local rows with `jax.make_array_from_process_local_data`); each
parameter is placed by `vit_jax.sharding` (replicated on a data-only mesh),
its optimizer state alongside; XLA inserts the all-gathers and reductions.

`pmap`: the same step mapped over the local devices with an explicit
`pmean`; each process feeds a (local_devices, per_device_batch, ...) array.

All compute the mean over the same global batch, so their loss curves agree
to float tolerance (dropout and mixup draw per-device keys under pmap, so they
are the same in distribution, not bit for bit).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax.sharding import ACTIVATION_RULES, BATCH, check_divisible
from vit_jax.training import job
from vit_jax.training.mesh import make_mesh, resolve_mesh, state_shardings
from vit_jax.training.state import TrainState
from vit_jax.training.steps import eval_step, train_step

MODES = ("jit", "pmap")
AXIS = "data"


class ParallelError(ValueError):
    """A batch size or device set that data parallelism cannot use."""


def initialize_distributed(coordinator_address: str | None, num_processes: int | None, process_id: int | None,
                           timeout: int = job.DEFAULT_TIMEOUT, workdir: str | None = None) -> None:
    """Join a multi-process job (no-op when no coordinator is given); a process silent for `timeout` s is lost.

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
    job.join(coordinator_address, num_processes, process_id, timeout, workdir)


class DataParallel:
    """Places state and batches on the devices and runs the compiled steps.

    `mesh` is the parsed `--mesh` (axis -> size, one may be -1); after
    construction, `place(state)` fixes where each leaf of the training state
    lives (state as arrays or shape structs).
    """

    def __init__(self, mode: str, global_batch_size: int, eval_batch_size: int, accum_steps: int = 1,
                 mesh: dict[str, int] | None = None):
        if mode not in MODES:
            raise ParallelError(f"--parallel {mode!r} is not one of {MODES}")
        self.mode = mode
        self.num_devices = jax.device_count()
        self.num_local_devices = jax.local_device_count()
        self.num_processes = jax.process_count()
        try:
            self.mesh_shape = resolve_mesh(mesh or {AXIS: -1}, self.num_devices, self.num_processes)
        except ValueError as error:
            raise ParallelError(str(error)) from None
        if mode == "pmap" and self.mesh_shape[AXIS] != self.num_devices:
            raise ParallelError("--parallel pmap is data-parallel only; use --parallel jit for an fsdp or model axis")
        if self.num_local_devices % self.mesh_shape["model"]:
            raise ParallelError(f"mesh axis model={self.mesh_shape['model']} must fit within one process's "
                                f"{self.num_local_devices} devices (a process feeds whole batch rows)")
        batch_devices = self.mesh_shape["data"] * self.mesh_shape["fsdp"]
        what = (f"the number of devices ({batch_devices})" if batch_devices == self.num_devices
                else f"the data x fsdp devices the batch is split over ({batch_devices})")
        for name, size in (("--batch-size", global_batch_size), ("--eval-batch-size", eval_batch_size)):
            if size <= 0 or size % batch_devices:
                raise ParallelError(f"{name} {size} is not divisible by {what}; use a multiple of {batch_devices}")
        per_device = global_batch_size // batch_devices
        if accum_steps < 1 or per_device % accum_steps:
            raise ParallelError(
                f"--accum-steps {accum_steps} must divide the per-device batch "
                f"({global_batch_size} / {batch_devices} devices = {per_device})"
            )
        self.process_batch_size = global_batch_size // self.num_processes
        self.process_eval_batch_size = eval_batch_size // self.num_processes
        self.state_sharding: Any = None
        if mode == "jit":
            self.mesh = make_mesh(self.mesh_shape)
            self.replicated = NamedSharding(self.mesh, PartitionSpec())
            self.sharded = NamedSharding(self.mesh, PartitionSpec(BATCH))
        else:
            self.mesh = Mesh(np.asarray(jax.local_devices()), (AXIS,))
            self.sharded = NamedSharding(self.mesh, PartitionSpec(AXIS))

    def check_model(self, num_heads: int, mlp_dim: int) -> None:
        try:
            check_divisible(num_heads, mlp_dim, self.mesh_shape)
        except ValueError as error:
            raise ParallelError(str(error)) from None

    def place(self, state: Any, min_bytes: int) -> None:
        """Fix each state leaf's sharding (jit): params by vit_jax.sharding's rules, optimizer state alongside."""
        if self.mode == "jit":
            self.state_sharding = state_shardings(self.mesh, state, min_bytes)

    # -- placement --------------------------------------------------------
    def put_state(self, state: Any) -> Any:
        """Host (NumPy) state -> placed on the devices (device arrays already placed pass through)."""
        if self.mode == "jit":
            def put(x, sharding):
                if isinstance(x, jax.Array):
                    return jax.device_put(x, sharding)
                host = np.asarray(x)
                return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

            return jax.tree.map(put, state, self.state_sharding)
        n = self.num_local_devices
        return jax.device_put(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), state),
                              self.sharded)

    def checkpoint_state(self, state: Any) -> Any:
        """What a checkpoint saves: the device arrays themselves under jit (each process writes its own
        shards), one NumPy copy of the replicated state under pmap."""
        return state if self.mode == "jit" else self.host_state(state)

    def host_state(self, state: Any) -> Any:
        """Device state -> one whole NumPy copy in every process (a collective when shards span processes)."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                                if not x.is_fully_addressable else np.asarray(x), state)
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
    def _in_mesh(self, fn: Callable) -> Callable:
        """`fn` traced with the mesh and the activation rules set (the model's logical constraints then apply).

        A data-only mesh needs none: the batch split is all there is, and the program stays today's.
        """
        if self.mesh_shape[AXIS] == self.num_devices:
            return fn

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), nn.logical_axis_rules(ACTIVATION_RULES):
                return fn(*args, **kwargs)

        return traced

    def compile_train_step(self, **step_kwargs) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
        if self.mode == "jit":
            fn = self._in_mesh(functools.partial(train_step, **step_kwargs))
            return jax.jit(
                fn,
                in_shardings=(self.state_sharding, self.sharded),
                out_shardings=(self.state_sharding, self.replicated),
                donate_argnums=0,
            )
        fn = functools.partial(train_step, axis_name=AXIS, **step_kwargs)
        return jax.pmap(fn, axis_name=AXIS, donate_argnums=0)

    def compile_eval_step(self, apply_fn: Callable[..., jax.Array]) -> Callable[[Any, dict], dict]:
        if self.mode == "jit":
            fn = self._in_mesh(functools.partial(eval_step, apply_fn=apply_fn))
            return jax.jit(fn, in_shardings=(self.state_sharding.params, self.sharded), out_shardings=self.replicated)
        return jax.pmap(functools.partial(eval_step, apply_fn=apply_fn, axis_name=AXIS), axis_name=AXIS)
