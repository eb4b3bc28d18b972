"""Where each weight of the ViT lives on a device mesh: logical axes by parameter path, one rule table.

Placement is metadata beside the model: `model.py` and its parameter tree
(Google's names) know nothing of meshes. Each weight's dimensions get logical
names from `PARAM_AXES` (matched on the '/'-joined path); `RULES` maps a logical
axis to a mesh axis of ("data", "fsdp", "model"):

- `fsdp` shards the embedding (`embed`) dimension of every weight; a weight
  with none that the axis divides has its largest divisible dimension sharded
  instead (as big_vision's fsdp tactic);
- `model` shards attention heads and the MLP hidden width Megatron-style:
  query/key/value and Dense_0 are column-parallel (their output features
  split), `out` and Dense_1 row-parallel (their input features split), so a
  block needs one reduction per branch;
- the batch goes over `data` and `fsdp` together.

The activations keep their batch split (`ACTIVATION_RULES`).

Weights smaller than `min_bytes` stay replicated (all-gathering them costs
more than their memory). The stacked layer axis of a scanned model is never
sharded. GSPMD (XLA's partitioner) propagates these placements to the
activations and inserts the collectives.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flax import traverse_util
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
BATCH = ("data", "fsdp")  # the mesh axes a batch's first dimension is split over

# logical axis -> mesh axis (None: never split)
RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "heads": "model",
    "mlp": "model",
    "kv": None,  # head_dim
    "classes": None,
    "layers": None,  # the stacked axis of a scanned model
}

# Activations: the model marks the residual stream at each block's input as ("batch", None, None)
# (`nn.with_logical_constraint`, a no-op unless these rules and a mesh are set while tracing). Without it,
# GSPMD inside a scanned model's loop meets a batch split over fsdp and weights split over fsdp, and
# splits the tokens' features instead, gathering the whole batch: 6x the temporaries (ViT-B/16, fsdp=8).
ACTIVATION_RULES = (("batch", BATCH),)

# (pattern on the '/'-joined param path, logical axis of each dimension); first match wins.
_ATTENTION = r"MultiHeadDotProductAttention_0/"
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"^embedding/kernel$", (None, None, None, "embed")),  # conv (ph, pw, C, D); patch_norm's DenseGeneral alike
    (r"^embedding_norm_in/", (None,)),  # over a patch's pixels
    (r"^cls$", (None, None, "embed")),
    (r"posembed_input/pos_embedding$", (None, None, "embed")),
    (_ATTENTION + r"(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (_ATTENTION + r"(query|key|value)/bias$", ("heads", "kv")),
    (_ATTENTION + r"out/kernel$", ("heads", "kv", "embed")),
    (r"MlpBlock_0/Dense_0/kernel$", ("embed", "mlp")),
    (r"MlpBlock_0/Dense_0/bias$", ("mlp",)),
    (r"MlpBlock_0/Dense_1/kernel$", ("mlp", "embed")),
    (r"^pre_logits/kernel$", ("embed", None)),
    (r"^head/kernel$", ("embed", "classes")),
    (r"^head/bias$", ("classes",)),
    # What remains of the encoder adds to or normalises the D-wide residual stream:
    # LayerNorm scales and biases, out and Dense_1 biases, the patch embedding's bias.
    (r"^(Transformer|embedding)", ("embed",)),
)


def logical_axes(path: str, shape: tuple[int, ...]) -> tuple[str | None, ...]:
    """The logical axis of each dimension of the weight at `path` (None where no rule names one)."""
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path) and len(shape) in (len(axes), len(axes) + 1):
            # One dimension more: the blocks of a scanned model, stacked in front.
            return ("layers", *axes) if len(shape) == len(axes) + 1 else axes
    return (None,) * len(shape)  # e.g. the hybrid's ResNet stem: fsdp picks a dimension


def partition_spec(path: str, shape: tuple[int, ...], itemsize: int, mesh_shape: dict[str, int],
                   min_bytes: int = 0) -> PartitionSpec:
    """Where one weight lives on a mesh of `mesh_shape` (axis -> size)."""
    if int(np.prod(shape, dtype=np.int64)) * itemsize < min_bytes:
        return PartitionSpec()
    axes = logical_axes(path, shape)
    spec: list[str | None] = []
    for axis, dim in zip(axes, shape):
        mesh_axis = RULES.get(axis) if axis else None
        size = mesh_shape.get(mesh_axis, 1) if mesh_axis else 1
        spec.append(mesh_axis if size > 1 and dim % size == 0 and mesh_axis not in spec else None)
    fsdp = mesh_shape.get("fsdp", 1)
    if fsdp > 1 and "fsdp" not in spec:  # largest free dimension the axis divides
        free = [i for i, (axis, dim) in enumerate(zip(axes, shape))
                if spec[i] is None and axis != "layers" and dim % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: shape[i])] = "fsdp"
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def param_specs(params: Any, mesh_shape: dict[str, int], min_bytes: int = 0) -> Any:
    """A PartitionSpec per weight of `params` (arrays or shape/dtype structs), as the same tree."""
    flat = traverse_util.flatten_dict(params, sep="/")
    specs = {path: partition_spec(path, tuple(leaf.shape), np.dtype(leaf.dtype).itemsize, mesh_shape, min_bytes)
             for path, leaf in flat.items()}
    return traverse_util.unflatten_dict(specs, sep="/")


def check_divisible(num_heads: int, mlp_dim: int, mesh_shape: dict[str, int]) -> None:
    """`model` splits heads and the MLP width: it must divide both (ValueError naming which does not)."""
    model = mesh_shape.get("model", 1)
    for name, value in (("attention heads", num_heads), ("MLP width", mlp_dim)):
        if value % model:
            raise ValueError(f"mesh axis model={model} does not divide the model's {value} {name}; "
                             f"use a model size that divides both {num_heads} heads and MLP width {mlp_dim}")
