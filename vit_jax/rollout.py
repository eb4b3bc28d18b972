"""Attention rollout (Abnar & Zuidema, 2020) over attention probabilities, in NumPy.

    _, inter = apply_with_intermediates(VisionTransformer(config), {"params": params}, images, return_attention=True)
    maps = vit_jax.attention_rollout(inter, grid_size=config.grid_size)   # (B, grid_h, grid_w)

Computed as jeonsworld/ViT-pytorch and jacobgil/vit-explain do: per layer, fuse
the heads (mean, max or min), optionally zero the lowest attentions, add the
identity (the residual connection), renormalise the rows, and multiply the
layers from the first up. The map is the class token's row over the patch
tokens, or, for a model without a class token, the mean of all rows.
Framework-neutral: it takes NumPy arrays, JAX arrays or torch tensors (as
returned by the Flax model, the torch twin or Hugging Face's
`output_attentions=True`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")
_PROBS_KEY = re.compile(r"^blocks\.(\d+)\.attn_probs$")


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, possibly on an accelerator or needing grad
        array = array.detach().cpu()
        array = (array.double() if array.is_floating_point() else array).numpy()  # NumPy has no bfloat16
    return np.asarray(array, dtype=np.float64)


def layer_probs(attention_probs: Mapping[str, Any] | Sequence[Any] | np.ndarray) -> list[np.ndarray]:
    """Per-layer (B, heads, seq, seq) float64 arrays, first layer first.

    Accepts the models' intermediates dict (its `blocks.{i}.attn_probs` entries,
    other names ignored), a sequence of per-layer arrays, or one array stacked
    over layers (layers, B, heads, seq, seq).
    """
    if isinstance(attention_probs, Mapping):
        found = {int(m.group(1)): v for k, v in attention_probs.items() if (m := _PROBS_KEY.match(k))}
        if not found:
            raise ValueError("no 'blocks.{i}.attn_probs' entries: run the model with return_attention=True "
                             "(vit_jax.model.apply_with_intermediates)")
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"attention probabilities of blocks {sorted(found)}: expected blocks 0..{len(found) - 1}")
        layers = [_to_numpy(found[i]) for i in range(len(found))]
    else:
        layers = [_to_numpy(a) for a in attention_probs]
    if not layers:
        raise ValueError("no attention probabilities given (expected one (B, heads, seq, seq) array per layer)")
    shape = layers[0].shape
    for i, layer in enumerate(layers):
        if layer.ndim != 4 or layer.shape[-1] != layer.shape[-2] or layer.shape != shape:
            raise ValueError(
                f"layer {i}: attention probabilities shaped {layer.shape}, expected (batch, heads, seq, seq) "
                f"the same for every layer (layer 0: {shape})"
            )
    return layers


def fuse_heads(probs: np.ndarray, head_fusion: str = "mean") -> np.ndarray:
    """(B, heads, seq, seq) -> (B, seq, seq): the mean, max or min over heads."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is not one of {HEAD_FUSIONS}")
    return getattr(np, head_fusion)(probs, axis=1)


def discard_lowest(fused: np.ndarray, discard_ratio: float, keep_first: bool) -> np.ndarray:
    """Zero the lowest `int(seq * seq * discard_ratio)` entries of each (seq, seq) matrix.

    As jacobgil/vit-explain: the lowest entries are chosen over the whole
    matrix, and with `keep_first` the class token's attention to itself
    (entry [0, 0]) is never zeroed, so one fewer is dropped when it is among them.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    batch, seq, _ = fused.shape
    count = int(seq * seq * discard_ratio)
    if count == 0:
        return fused
    flat = fused.reshape(batch, seq * seq).copy()
    lowest = np.argsort(flat, axis=-1, kind="stable")[:, :count]
    drop = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(drop, lowest, True, axis=-1)
    if keep_first:
        drop[:, 0] = False
    flat[drop] = 0.0
    return flat.reshape(fused.shape)


def rollout_matrix(
    attention_probs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
) -> np.ndarray:
    """(B, seq, seq) float64: the product, last layer leftmost, of each layer's fused
    attention plus the identity with rows renormalised."""
    layers = layer_probs(attention_probs)
    batch, _, seq, _ = layers[0].shape
    identity = np.eye(seq)
    joint = np.broadcast_to(identity, (batch, seq, seq))
    for probs in layers:
        fused = fuse_heads(probs, head_fusion)
        fused = discard_lowest(fused, discard_ratio, keep_first=num_prefix_tokens > 0)
        step = fused + identity
        step = step / step.sum(axis=-1, keepdims=True)
        joint = step @ joint
    return joint


def attention_rollout(
    attention_probs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
    grid_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Attention rollout as a float32 (B, num_patches) array, or (B, grid_h, grid_w) with `grid_size`.

    `attention_probs`: the intermediates of `apply_with_intermediates(..., return_attention=True)`
    (or the twin's), or per-layer (B, heads, seq, seq) arrays. `num_prefix_tokens`:
    the tokens before the patches when the sequence starts with a class token
    (`config.num_prefix_tokens`: 1, or more with a distillation token or
    registers); then the map is the class token's row over the patch tokens. With 0 (a
    model without class token, e.g. classifier 'gap') the map is the mean of
    all rows. Not rescaled: with a class token it sums, with the class token's
    own entry, to 1.
    """
    _check_prefix(num_prefix_tokens)
    joint = rollout_matrix(attention_probs, head_fusion, discard_ratio, num_prefix_tokens)
    maps = joint[:, 0, num_prefix_tokens:] if num_prefix_tokens else joint.mean(axis=1)
    return _to_grid(maps, grid_size).astype(np.float32)


def head_maps(
    attention_probs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
    num_prefix_tokens: int = 1,
    grid_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """float32 (B, layers, heads, num_patches) (or (..., grid_h, grid_w)): each head's
    class-token attention over the patch tokens, or the mean of its rows without a class token."""
    _check_prefix(num_prefix_tokens)
    layers = np.stack(layer_probs(attention_probs), axis=1)  # (B, layers, heads, seq, seq)
    maps = layers[..., 0, num_prefix_tokens:] if num_prefix_tokens else layers.mean(axis=-2)
    return _to_grid(maps, grid_size).astype(np.float32)


def _check_prefix(num_prefix_tokens: int) -> None:
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an integer >= 0 (0: no class token), got {num_prefix_tokens!r}")


def _to_grid(maps: np.ndarray, grid_size: tuple[int, int] | None) -> np.ndarray:
    if grid_size is None:
        return maps
    grid_h, grid_w = grid_size
    if grid_h * grid_w != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} patch tokens do not fill a {grid_h}x{grid_w} grid")
    return maps.reshape(*maps.shape[:-1], grid_h, grid_w)
