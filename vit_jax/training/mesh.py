"""The device mesh of a run (`--mesh data=N,fsdp=N,model=N`) and the placement of its whole training state.

The parameters' placement comes from `vit_jax.sharding` (logical axes and
one rule table); the optimizer state follows its parameter: every leaf of the
optax state whose tree path ends in a parameter's path, with that parameter's
shape (AdamW's mu and nu, SGD's momentum), takes the parameter's placement;
the rest (step counts) is replicated.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax.sharding import MESH_AXES, param_specs

DEFAULT_MESH = "data=-1"


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,fsdp=-1' -> {'data': 2, 'fsdp': -1}; ValueError naming what is wrong."""
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip()
        if name not in MESH_AXES:
            raise ValueError(f"--mesh {text}: unknown axis {name!r}; the axes are {', '.join(MESH_AXES)} "
                             f"(e.g. data=2,fsdp=4)")
        if name in sizes:
            raise ValueError(f"--mesh {text}: axis {name!r} is given twice")
        try:
            size = int(value)
        except ValueError:
            size = 0
        if not sep or (size < 1 and size != -1):
            raise ValueError(f"--mesh {text}: {part.strip()!r} needs a positive size or -1 (the remaining devices)")
        sizes[name] = size
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"--mesh {text}: at most one axis may be -1")
    return sizes


def resolve_mesh(sizes: dict[str, int], num_devices: int, num_processes: int) -> dict[str, int]:
    """Every axis's size (1 where not given, -1 filled in); ValueError when they do not multiply to the devices."""
    where = f"{num_devices} device(s) across {num_processes} process(es)"
    given = math.prod(s for s in sizes.values() if s != -1)
    shape = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
    text = ",".join(f"{a}={s}" for a, s in sizes.items())
    for axis, size in shape.items():
        if size == -1:
            if num_devices % given:
                raise ValueError(f"--mesh {text}: the other axes' {given} devices do not divide the {where}")
            shape[axis] = num_devices // given
    if math.prod(shape.values()) != num_devices:
        raise ValueError(f"--mesh {text} has {math.prod(shape.values())} devices, but this run has {where}; "
                         f"make the sizes multiply to {num_devices} (or give one as -1)")
    return shape


def make_mesh(shape: dict[str, int]) -> Mesh:
    """All devices in process order, `model` innermost: a model group sits on neighbouring devices of one host."""
    return Mesh(np.asarray(jax.devices()).reshape([shape[a] for a in MESH_AXES]), MESH_AXES)


def follow_params(tree: Any, params: Any, specs: Any) -> Any:
    """A PartitionSpec per leaf of `tree` (an optimizer state): a parameter's own where the leaf mirrors it."""
    by_path = {tuple(path): (np.shape(leaf), spec) for (path, leaf), spec in
               zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(specs, is_leaf=_is_spec))}
    depths = sorted({len(path) for path in by_path})

    def spec_of(path, leaf):
        for depth in depths:
            found = by_path.get(tuple(path[-depth:])) if len(path) >= depth else None
            if found is not None and found[0] == np.shape(leaf):
                return found[1]
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec_of, tree)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def state_shardings(mesh: Mesh, state: Any, min_bytes: int) -> Any:
    """NamedShardings for a TrainState (arrays or shape structs): params by the rules, optimizer state following."""
    mesh_shape = dict(mesh.shape)
    specs = param_specs(state.params, mesh_shape, min_bytes)
    state_specs = state.replace(step=PartitionSpec(), params=specs, rng=PartitionSpec(),
                                opt_state=follow_params(state.opt_state, state.params, specs))
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs, is_leaf=_is_spec)


def bytes_total(tree: Any) -> int:
    return int(sum(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def bytes_per_device(tree: Any, shardings: Any) -> int:
    """The bytes one device holds of `tree` placed by `shardings` (the largest share, where shards differ)."""
    leaves, shards = jax.tree.leaves(tree), jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    return int(sum(math.prod(s.shard_shape(np.shape(x))) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, shards)))
