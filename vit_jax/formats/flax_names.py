"""Normalise the Flax parameter paths found in the wild to this project's Linen names.

Handles trees wrapped under `opt/target/` (pre-Linen training checkpoints, with
optimizer state beside them) or `params/` (Linen variables, train states), the
pre-Linen numbering inside a block (`MultiHeadDotProductAttention_1`,
`LayerNorm_2`, `MlpBlock_3`), scanned blocks (`Transformer/encoderblock`
with a leading layer axis), and big_vision's two-tower files (the image
tower under `params/img/`, its position embedding at `pos_embedding`).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from vit_jax.formats.base import FLAX, ConversionError, TensorSource

# params/img/: big_vision's two-tower checkpoints: the image tower; the text tower is left out.
WRAPPERS = ("opt/target/", "params/img/", "params/", "target/")
# big_vision's ViT keeps its learned position embedding at the top level.
_RENAMES = {"pos_embedding": "Transformer/posembed_input/pos_embedding"}
_PRE_LINEN = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
              "MlpBlock_3": "MlpBlock_0"}
_BLOCK_MODULE = re.compile(r"^(Transformer/encoderblock_\d+/)([^/]+)(/.*)$")
_SCANNED = "Transformer/encoderblock/"


def _strip_wrapper(keys: list[str]) -> tuple[str, list[str]]:
    if any(k.startswith("embedding/") for k in keys):
        return "", keys
    for wrapper in WRAPPERS:
        if any(k.startswith(wrapper + "embedding/") for k in keys):
            return wrapper, [k for k in keys if k.startswith(wrapper)]
    return "", keys


def flax_source(
    path: str,
    format_name: str,
    shapes: dict[str, tuple[int, ...]],
    loader: Callable[[str], np.ndarray],
    numerics: dict,
    load_layer: Callable[[str, int], np.ndarray] | None = None,
) -> TensorSource:
    """A TensorSource in this project's Flax naming over a file's own '/'-joined paths.

    `load_layer(file key, i)` reads layer i of a scanned (stacked) array on its own, where the format can;
    without it a block's tensor is sliced from the whole stacked array.
    """
    wrapper, keys = _strip_wrapper(list(shapes))
    notes = []
    if len(keys) < len(shapes):
        notes.append(f"ignored {len(shapes) - len(keys)} arrays outside '{wrapper}' (optimizer state, or the "
                     f"text tower and logit scale of a two-tower model)")
    stripped = [k[len(wrapper):] for k in keys]
    pre_linen = any((m := _BLOCK_MODULE.match(k)) and m.group(2) in ("LayerNorm_2", "MlpBlock_3") for k in stripped)
    if pre_linen:
        notes.append("pre-Linen block numbering (MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3)")
    names: dict[str, str] = {}  # our key -> key in the file
    ours_shapes: dict[str, tuple[int, ...]] = {}
    layer_of: dict[str, int] = {}
    for file_key in keys:
        key = file_key[len(wrapper):]
        key = _RENAMES.get(key, key)
        match = _BLOCK_MODULE.match(key)
        if pre_linen and match and match.group(2) in _PRE_LINEN:
            key = match.group(1) + _PRE_LINEN[match.group(2)] + match.group(3)
        if key.startswith(_SCANNED):  # one entry per layer, sliced on load
            shape = shapes[file_key]
            if not shape:
                raise ConversionError(f"{path}: scanned tensor {file_key!r} has no layer axis")
            if "scanned blocks (Transformer/encoderblock)" not in notes:
                notes.append("scanned blocks (Transformer/encoderblock)")
            for i in range(shape[0]):
                block_key = f"Transformer/encoderblock_{i}/" + key[len(_SCANNED):]
                names[block_key], ours_shapes[block_key], layer_of[block_key] = file_key, shape[1:], i
            continue
        if key in names:
            raise ConversionError(f"{path}: tensors {names[key]!r} and {file_key!r} both map to {key!r}")
        names[key], ours_shapes[key] = file_key, shapes[file_key]

    def load(key: str) -> np.ndarray:
        if key not in layer_of:
            return loader(names[key])
        if load_layer is not None:
            return load_layer(names[key], layer_of[key])
        # copy() so one block's slice does not keep the whole stacked array alive
        return loader(names[key])[layer_of[key]].copy()

    return TensorSource(path=path, format=format_name, naming=FLAX, shapes=ours_shapes, loader=load,
                        names=names, numerics=dict(numerics), notes=notes)
