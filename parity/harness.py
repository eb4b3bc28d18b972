"""Runs the Flax ViT and its PyTorch twin on one config, one set of weights and one batch.

Weights reach the twin only through the mapping table (`torch_model_from_flax`),
and the twin's gradients and updated parameters come back through the same
table (`torch_to_flax`), so a wrong rule shows up as a numeric difference.
Everything returned is NumPy, keyed by canonical layer names (activations) or
'/'-joined Flax paths in per-block layout (gradients, parameters).

Dropout and stochastic depth are off on both sides (deterministic forward),
so the two runs are comparable element by element.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

import parity
from vit_jax.config import ViTConfig
from vit_jax.formats.mapping import flatten
from vit_jax.formats.torch_arrays import to_numpy
from vit_jax.model import VisionTransformer
from vit_jax.params import unstack_block_params


@dataclasses.dataclass
class RunResult:
    """What one framework computed at one precision."""

    intermediates: dict[str, np.ndarray]  # canonical layer name -> activation (attention maps included)
    loss: float | None = None
    grads: dict[str, np.ndarray] | None = None  # Flax path -> gradient


@dataclasses.dataclass(frozen=True)
class AdamWSettings:
    """Hyper-parameters shared by optax.adamw and torch.optim.AdamW.

    Both apply decoupled weight decay to every parameter (no mask on either
    side): p <- p - lr * (adam_direction + weight_decay * p), where torch's
    `p.mul_(1 - lr * wd)` before the Adam update is the same expression.
    Both use eps outside the square root and bias-corrected moments.
    """

    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.05


@dataclasses.dataclass
class TrainResult:
    params_after_first_step: dict[str, np.ndarray]  # Flax path -> updated parameter
    losses: list[float]  # loss of each step, before its update


def float64_config(config: ViTConfig) -> ViTConfig:
    return config.replace(dtype="float64", param_dtype="float64")


def cast_params(params: Any, dtype) -> Any:
    return jax.tree.map(lambda a: np.asarray(a, dtype), params)


def flat_per_block(tree: Any) -> dict[str, np.ndarray]:
    """Nested (per-block or scanned) tree -> {'/'-path: NumPy array}, per-block layout."""
    return {k: np.asarray(v) for k, v in flatten(unstack_block_params(dict(tree))).items()}


@contextlib.contextmanager
def full_float32_precision() -> Iterator[None]:
    """Pin float32 matmuls/convolutions to full precision on both sides (no TF32, no bf16 passes).

    A no-op on CPU, where both already compute in full float32; on GPU JAX's
    default precision and torch's cuDNN default would use TF32.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- loss: the same function in both frameworks -------------------------------
def _jax_loss(output: jax.Array, targets: jax.Array, dtype) -> jax.Array:
    """Mean softmax cross-entropy on integer labels, or mean squared error without a head."""
    output = output.astype(dtype)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return optax.softmax_cross_entropy_with_integer_labels(output, targets).mean()
    return jnp.mean((output - targets.astype(dtype)) ** 2)


def _torch_loss(output: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    output = output.to(dtype)
    if not targets.is_floating_point():
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1).long())
    return torch.mean((output - targets.to(dtype)) ** 2)


LOSS_DESCRIPTION = (
    "mean softmax cross-entropy over fixed random labels (one per output row; per token for unpooled "
    "classifiers), or mean squared error to fixed random targets when num_classes = 0; computed in the "
    "parameter dtype on both sides. Gradients are taken through the same forward pass that yields the "
    "intermediates (explicit attention, which also returns the attention maps); the AdamW steps use each "
    "framework's default attention kernel (jax.nn.dot_product_attention, torch scaled_dot_product_attention)"
)


# -- Flax ----------------------------------------------------------------------
def run_flax(
    config: ViTConfig, params: Any, images: np.ndarray, targets: np.ndarray, backward: bool, device: jax.Device
) -> RunResult:
    model = VisionTransformer(config)
    param_dtype = jnp.dtype(config.param_dtype)

    def forward(p, x, y):
        out, inter = model.apply({"params": p}, x, return_intermediates=True, return_attention=True)
        return _jax_loss(out, y, param_dtype), inter

    with jax.default_device(device):
        params = jax.device_put(params, device)
        x = jax.device_put(jnp.asarray(images, param_dtype), device)
        y = jax.device_put(jnp.asarray(targets), device)
        # One compiled function gives the intermediates, the loss and (with
        # backward) the gradients: compiling a ViT dominates small runs.
        # Results are waited for while the compiled function is alive: with oneDNN
        # matmuls, freeing a running executable aborts the process (vit_jax/cpu/onednn.py).
        if backward:
            step = jax.jit(jax.value_and_grad(forward, has_aux=True))
            (loss, inter), grads = jax.block_until_ready(step(params, x, y))
            return RunResult({k: np.asarray(v) for k, v in inter.items()}, float(loss), flat_per_block(grads))
        step = jax.jit(forward)
        loss, inter = jax.block_until_ready(step(params, x, y))
        return RunResult({k: np.asarray(v) for k, v in inter.items()}, float(loss))


def train_flax(
    config: ViTConfig, params: Any, batches: list[np.ndarray], targets: list[np.ndarray], settings: AdamWSettings,
    device: jax.Device,
) -> TrainResult:
    model = VisionTransformer(config)
    param_dtype = jnp.dtype(config.param_dtype)
    tx = optax.adamw(settings.learning_rate, settings.b1, settings.b2, settings.eps, weight_decay=settings.weight_decay)

    @jax.jit
    def step(p, state, x, y):
        loss, grads = jax.value_and_grad(lambda p: _jax_loss(model.apply({"params": p}, x), y, param_dtype))(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    with jax.default_device(device):
        p = jax.device_put(jax.tree.map(jnp.asarray, params), device)
        state = tx.init(p)
        losses, first = [], None
        for x, y in zip(batches, targets):
            p, state, loss = step(p, state, jnp.asarray(x, param_dtype), jnp.asarray(y))
            losses.append(float(loss))
            if first is None:
                first = flat_per_block(p)
    return TrainResult(first, losses)


# -- PyTorch -------------------------------------------------------------------
def _torch_images(images: np.ndarray, device: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device=device, dtype=dtype)


def _torch_targets(targets: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(targets)).to(device)


def build_torch_model(params: Any, config: ViTConfig, device: str) -> torch.nn.Module:
    """The twin holding `params`, moved across by the mapping table."""
    return parity.torch_model_from_flax(params, config).to(device)


def _torch_param_tree(model: torch.nn.Module, config: ViTConfig, grads: bool) -> dict[str, np.ndarray]:
    """Parameters (or their gradients) of the twin, mapped back to Flax paths by the same table."""
    tensors = {}
    for name, p in model.named_parameters():
        tensor = p.grad if grads else p
        # Copy: to_numpy shares memory, and the optimizer keeps updating these tensors in place.
        tensors[name] = to_numpy(tensor if tensor is not None else torch.zeros_like(p)).copy()
    return flat_per_block(parity.torch_to_flax(tensors, config,
                                               source="twin " + ("gradients" if grads else "parameters")))


def run_torch(
    config: ViTConfig, params: Any, images: np.ndarray, targets: np.ndarray, backward: bool, device: str
) -> RunResult:
    from vit_torch_ref.model import torch_dtype

    model = build_torch_model(params, config, device)
    param_dtype = torch_dtype(config.param_dtype)
    x = _torch_images(images, device, param_dtype)
    with torch.set_grad_enabled(backward):
        out, inter = model(x, return_intermediates=True, return_attention=True)
        loss = _torch_loss(out, _torch_targets(targets, device), param_dtype)
    result = RunResult({k: to_numpy(v) for k, v in inter.items()}, loss.item())
    if backward:
        loss.backward()
        result.grads = _torch_param_tree(model, config, grads=True)
    return result


def train_torch(
    config: ViTConfig, params: Any, batches: list[np.ndarray], targets: list[np.ndarray], settings: AdamWSettings,
    device: str,
) -> TrainResult:
    from vit_torch_ref.model import torch_dtype

    model = build_torch_model(params, config, device)
    param_dtype = torch_dtype(config.param_dtype)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        betas=(settings.b1, settings.b2),
        eps=settings.eps,
        weight_decay=settings.weight_decay,
    )
    losses, first = [], None
    for x, y in zip(batches, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = _torch_loss(model(_torch_images(x, device, param_dtype)), _torch_targets(y, device), param_dtype)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if first is None:
            first = _torch_param_tree(model, config, grads=False)
    return TrainResult(first, losses)
