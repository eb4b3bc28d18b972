"""Operations on Flax ViT param trees: scanned <-> per-block layout, resizing.

Trees here are nested dicts of arrays (NumPy or JAX), as `init_params` returns
or as a Google `.npz` unflattens to.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from vit_jax.config import ViTConfig
from vit_jax.posemb import resize_pos_embed

SCANNED_BLOCK = "encoderblock"


def _block_name(i: int) -> str:
    return f"{SCANNED_BLOCK}_{i}"


def is_scanned(params: dict[str, Any]) -> bool:
    return SCANNED_BLOCK in params.get("Transformer", {})


def stack_block_params(params: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """Per-block tree (encoderblock_0..N-1) -> scanned tree (encoderblock, leading layer axis)."""
    encoder = dict(params["Transformer"])
    missing = [_block_name(i) for i in range(num_layers) if _block_name(i) not in encoder]
    if missing:
        raise KeyError(f"cannot stack blocks: missing Transformer/{missing[0]} (expected {num_layers} blocks)")
    blocks = [encoder.pop(_block_name(i)) for i in range(num_layers)]
    xp = np if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(blocks)) else jax.numpy
    encoder[SCANNED_BLOCK] = jax.tree.map(lambda *xs: xp.stack(xs), *blocks)
    return {**params, "Transformer": encoder}


def unstack_block_params(params: dict[str, Any]) -> dict[str, Any]:
    """Scanned tree -> per-block tree with Google's standard names."""
    if not is_scanned(params):
        return params
    encoder = dict(params["Transformer"])
    stacked = encoder.pop(SCANNED_BLOCK)
    num_layers = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(num_layers):
        encoder[_block_name(i)] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return {**params, "Transformer": encoder}


def to_layout(params: dict[str, Any], config: ViTConfig) -> dict[str, Any]:
    """Return params in the layout `config` expects (scanned or per-block)."""
    if config.scan and not is_scanned(params):
        return stack_block_params(params, config.num_layers)
    if not config.scan and is_scanned(params):
        return unstack_block_params(params)
    return params


def resize_params(
    params: dict[str, Any],
    config: ViTConfig,
    image_size: int | tuple[int, int],
    method: str | None = None,
) -> dict[str, Any]:
    """Params of `config` adapted to a new image size (learned posemb resized; `method` default: the config's).

    Returns a new tree; use it with `config.replace(image_size=image_size)`.
    """
    new_config = config.replace(image_size=image_size)
    if config.posemb != "learn" or new_config.grid_size == config.grid_size:
        return params
    encoder = dict(params["Transformer"])
    posembed = dict(encoder["posembed_input"])
    posembed["pos_embedding"] = resize_pos_embed(
        np.asarray(posembed["pos_embedding"]),
        new_config.grid_size,
        num_prefix_tokens=config.posemb_prefix_tokens,
        old_grid=config.grid_size,
        method=method or config.posemb_resize,
    )
    encoder["posembed_input"] = posembed
    return {**params, "Transformer": encoder}
