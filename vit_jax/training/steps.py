"""Pure train and eval steps. `parallel.py` jits (or pmaps) them once.

With `axis_name` set (pmap), gradients and metrics are averaged across the
mapped devices; under jit with a sharded batch, the batch mean already is the
global mean and XLA inserts the reduction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vit_jax.training.optim import cross_entropy, mix_batch, soft_targets
from vit_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    num_classes: int
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    accum_steps: int = 1


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k largest logits, per example."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def _micro_batches(batch: Batch, accum_steps: int) -> Batch:
    """(B, ...) -> (accum_steps, B // accum_steps, ...), micro-batch i = rows i, i+k, ...

    Striding (not slicing) keeps every micro-batch spread over all devices
    when the batch axis is sharded, so no data moves between devices.
    """

    def split(x):
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    apply_fn: Callable[..., jax.Array],
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    options: StepOptions,
    axis_name: str | None = None,
) -> tuple[TrainState, Metrics]:
    key = state.step_key()
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def loss_fn(params, micro, micro_key):
        mix_key, dropout_key = jax.random.split(micro_key)
        targets = soft_targets(micro["label"], options.num_classes, options.label_smoothing)
        images, targets = mix_batch(mix_key, micro["image"], targets, options.mixup_alpha, options.cutmix_alpha)
        logits = apply_fn({"params": params}, images, train=True, rngs={"dropout": dropout_key})
        logits = logits.astype(jnp.float32)
        loss = jnp.mean(cross_entropy(logits, targets))
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(topk_correct(logits, micro["label"], 1)),
            "top5": jnp.mean(topk_correct(logits, micro["label"], 5)),
        }
        return loss, metrics

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if options.accum_steps == 1:
        grads, metrics = grad_fn(state.params, batch, key)
    else:
        micros = _micro_batches(batch, options.accum_steps)
        keys = jax.random.split(key, options.accum_steps)

        def accumulate(carry, xs):
            micro, micro_key = xs
            grads, metrics = grad_fn(state.params, micro, micro_key)
            return jax.tree.map(jnp.add, carry, (grads, metrics)), None

        zero_metrics = {name: jnp.zeros((), jnp.float32) for name in ("loss", "accuracy", "top5")}
        zeros = (jax.tree.map(jnp.zeros_like, state.params), zero_metrics)
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (micros, keys))
        grads, metrics = jax.tree.map(lambda x: x / options.accum_steps, (grads, metrics))

    if axis_name is not None:
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params: Any, batch: Batch, *, apply_fn: Callable[..., jax.Array],
              axis_name: str | None = None) -> Metrics:
    """Sums over the real examples of a (padded) eval batch; the caller divides by `count`."""
    logits = apply_fn({"params": params}, batch["image"], train=False).astype(jnp.float32)
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    sums = {
        "loss": jnp.sum(cross_entropy(logits, one_hot) * mask),
        "accuracy": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(logits, labels, 5) * mask),
        "count": jnp.sum(mask),
    }
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
