"""Optimiser, learning-rate schedule, losses and on-device mixing for training.

Weight decay and freezing are rules over '/'-joined parameter names (as in
big_vision), so they read the same for per-block and scanned param trees.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

# Only matmul/conv kernels are decayed; biases, LayerNorm scales, the position
# embedding and the class token are not (the usual ViT recipe).
DECAY_RULE = r"(^|/)kernel$"
# Trainable with --freeze-backbone: the classifier (two when distilled) and its optional pre-logits layer.
HEAD_RULE = r"^(head|head_dist|pre_logits)/"
# --layer-decay groups (timm's): the encoder blocks, one per layer (a scanned stack is one leaf with the
# layer on axis 0); the final norm, grouped with the last block; the head side; everything else (patch or
# hybrid stem, tokens, position embedding) is the embedding group, which gets the deepest decay.
BLOCK_RULE = r"^Transformer/encoderblock(_(\d+))?/"
FINAL_NORM_RULE = r"^Transformer/encoder_norm/"
AFTER_BLOCKS_RULE = r"^(head|head_dist|pre_logits|MAPHead_\d+|fc_norm)(/|$)"

OPTIMIZERS = ("adamw", "sgd", "lion", "lamb", "adafactor", "muon")
SCHEDULES = ("cosine", "linear", "constant")


def path_mask(params: Any, rule: str) -> Any:
    """Tree of bools, True where the '/'-joined parameter name matches `rule`."""
    pattern = re.compile(rule)
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: bool(pattern.search(k)) for k in flat}, sep="/")


def learning_rate_schedule(
    peak: float, total_steps: int, warmup_steps: int, decay: str, end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then cosine/linear decay to `peak * end_factor`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    end = peak * end_factor
    if decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end_factor)
    elif decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    elif decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"schedule {decay!r} is not one of {SCHEDULES}")
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(
    params: Any,
    *,
    name: str,
    schedule: optax.Schedule,
    weight_decay: float,
    grad_clip: float,
    b1: float = 0.9,
    b2: float = 0.999,
    momentum: float = 0.9,
    nesterov: bool = False,
    freeze_backbone: bool = False,
    ema_decay: float = 0.0,
    layer_decay: float | None = None,
) -> optax.GradientTransformation:
    """`name`'s update with global-norm clipping and weight decay masked to kernels (DECAY_RULE).

    Every optimizer takes its step size from `schedule` and decays decoupled from
    the gradient statistics, scaled by the lr (AdamW-style).
    """
    decay_mask = path_mask(params, DECAY_RULE)
    parts = []
    if grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(_update_rule(name, schedule, weight_decay, decay_mask, b1=b1, b2=b2, momentum=momentum,
                              nesterov=nesterov))
    if layer_decay is not None:
        # Scaling the whole step (decay included) scales the lr, as timm's per-group lr_scale does.
        multipliers = layer_decay_multipliers(params, layer_decay)
        parts.append(optax.stateless(lambda updates, _: jax.tree.map(lambda u, m: u * m, updates, multipliers)))
    tx = optax.chain(*parts)
    if freeze_backbone:
        labels = jax.tree.map(lambda head: "train" if head else "freeze", path_mask(params, HEAD_RULE))
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return optax.chain(tx, track_ema(ema_decay)) if ema_decay > 0 else tx


def layer_decay_multipliers(params: Any, decay: float) -> Any:
    """The lr multiplier of every parameter: decay ** (L + 1 - layer_id), as timm's param_groups_layer_decay.

    With L blocks, layer_id is 0 for the embeddings, i + 1 for block i (the final norm goes with the
    last block, as in timm; BEiT puts it with the head) and L + 1 for the head: so the embeddings get
    decay ** (L + 1), block i decay ** (L - i), the head 1. A scanned stack gets an array of its L
    multipliers along axis 0 (broadcast over the rest).
    """
    flat = traverse_util.flatten_dict(params, sep="/")
    blocks = [re.match(BLOCK_RULE, name) for name in flat]
    indices = {int(m.group(2)) for m in blocks if m and m.group(2) is not None}
    stacked = [leaf.shape[0] for name, leaf in flat.items() if re.match(BLOCK_RULE, name) and "encoderblock/" in name]
    num_layers = max(indices) + 1 if indices else (stacked[0] if stacked else 0)

    def multiplier(name: str, leaf) -> Any:
        block = re.match(BLOCK_RULE, name)
        if block and block.group(2) is not None:
            return decay ** (num_layers - int(block.group(2)))
        if block:
            per_layer = decay ** (num_layers - np.arange(num_layers, dtype=np.float64))
            return per_layer.reshape((num_layers,) + (1,) * (len(leaf.shape) - 1)).astype(np.float32)
        if re.match(FINAL_NORM_RULE, name):
            return decay
        if re.match(AFTER_BLOCKS_RULE, name):
            return 1.0
        return decay ** (num_layers + 1)

    return traverse_util.unflatten_dict({name: multiplier(name, leaf) for name, leaf in flat.items()}, sep="/")


class EmaParams(NamedTuple):
    """The weights' moving average. Kept in the optimizer state, so checkpoints, resume and sharding carry it."""

    ema: Any


def track_ema(decay: float) -> optax.GradientTransformation:
    """Passes updates through; after each step, ema = decay * ema + (1 - decay) * new params (timm's ModelEmaV2).

    The average starts at the initial params, as timm's copy of the model does.
    """

    def init(params):
        return EmaParams(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))

    def update(updates, state, params):
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), state.ema, new_params)
        return updates, EmaParams(ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
    """The EMA weights an optimizer state built with ema_decay > 0 holds, else None."""
    found = jax.tree.leaves(opt_state, is_leaf=lambda node: isinstance(node, EmaParams))
    return next((node.ema for node in found if isinstance(node, EmaParams)), None)


def _update_rule(name: str, schedule, weight_decay: float, decay_mask: Any, *, b1: float, b2: float,
                 momentum: float, nesterov: bool) -> optax.GradientTransformation:
    if name == "adamw":
        return optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
    if name == "sgd":
        # Decoupled from the gradient statistics but scaled by the lr, as in SGDW.
        decay = [optax.add_decayed_weights(weight_decay, mask=decay_mask)] if weight_decay > 0 else []
        return optax.chain(*decay, optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
    if name == "lion":
        # The sign of an interpolated momentum: every step has the size of the lr.
        return optax.lion(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
    if name == "lamb":
        # Adam's direction rescaled per parameter by ||w|| / ||update|| (the trust ratio); eps as in the paper.
        return optax.lamb(schedule, b1=b1, b2=b2, eps=1e-6, weight_decay=weight_decay, mask=decay_mask)
    if name == "adafactor":
        # optax.adafactor's defaults (factored second moments, updates clipped to block RMS 1, no first moment)
        # with an absolute lr (not scaled by each parameter's RMS) and lr-scaled decay, like the others.
        return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0),
                           optax.add_decayed_weights(weight_decay, mask=decay_mask),
                           optax.scale_by_learning_rate(schedule))
    if name == "muon":
        return _muon(schedule, weight_decay, b1=b1, b2=b2)
    raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")


def _muon(schedule, weight_decay: float, *, b1: float, b2: float) -> optax.GradientTransformation:
    """Muon (orthogonalised momentum) for every kernel, AdamW without decay for everything else.

    The kernels are exactly the DECAY_RULE parameters, so decay falls where it does
    for the other optimizers. Each kernel is read as the matrix of the product it
    computes (inputs x outputs); leading axes (scanned layers) are batch axes.
    """
    from optax.contrib import MuonDimensionNumbers, muon

    def matrix_axes(path, leaf):
        name = "/".join(str(getattr(key, "key", key)) for key in path)
        n = leaf.ndim
        if not re.search(DECAY_RULE, name) or n < 2:
            return None
        if re.search(r"(^|/)(query|key|value)/kernel$", name):  # (in, heads, head_dim)
            return MuonDimensionNumbers(reduction_axis=n - 3, output_axis=(n - 2, n - 1))
        if re.search(r"(^|/)out/kernel$", name):  # (heads, head_dim, out)
            return MuonDimensionNumbers(reduction_axis=(n - 3, n - 2), output_axis=n - 1)
        if n == 4:  # a convolution (kh, kw, in, out), e.g. the patch embedding
            return MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
        return MuonDimensionNumbers(reduction_axis=n - 2, output_axis=n - 1)

    return muon(schedule, weight_decay=weight_decay, adam_b1=b1, adam_b2=b2, adam_weight_decay=0.0,
                muon_weight_dimension_numbers=lambda params: jax.tree_util.tree_map_with_path(matrix_axes, params))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy against (possibly soft) float32 targets."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def soft_targets(labels: jax.Array, num_classes: int, label_smoothing: float) -> jax.Array:
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return optax.smooth_labels(one_hot, label_smoothing) if label_smoothing > 0 else one_hot


def mix_batch(
    rng: jax.Array, images: jax.Array, targets: jax.Array, mixup_alpha: float, cutmix_alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix of each example with its partner in the reversed batch.

    With both alphas > 0, each batch uses one of the two, chosen by a fair coin.
    The mixing ratio is one Beta(alpha, alpha) draw per batch (timm's default).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    choose, lam_rng, box_rng = jax.random.split(rng, 3)
    partner_images, partner_targets = images[::-1], targets[::-1]

    def mixup():
        lam = jax.random.beta(lam_rng, mixup_alpha, mixup_alpha)
        mixed = lam * images + (1.0 - lam) * partner_images
        return mixed.astype(images.dtype), lam

    def cutmix():
        _, h, w, _ = images.shape
        lam = jax.random.beta(lam_rng, cutmix_alpha, cutmix_alpha)
        cut = jnp.sqrt(1.0 - lam)
        cut_h, cut_w = (cut * h).astype(jnp.int32), (cut * w).astype(jnp.int32)
        cy_rng, cx_rng = jax.random.split(box_rng)
        cy, cx = jax.random.randint(cy_rng, (), 0, h), jax.random.randint(cx_rng, (), 0, w)
        y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
        x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
        rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
        inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
        mixed = jnp.where(inside[None, :, :, None], partner_images, images)
        # The label weight is the area actually kept after clipping to the image.
        kept = 1.0 - ((y1 - y0) * (x1 - x0)) / (h * w)
        return mixed, kept.astype(jnp.float32)

    if mixup_alpha > 0 and cutmix_alpha > 0:
        mixed, lam = jax.lax.cond(jax.random.bernoulli(choose), mixup, cutmix)
    elif mixup_alpha > 0:
        mixed, lam = mixup()
    else:
        mixed, lam = cutmix()
    return mixed, lam * targets + (1.0 - lam) * partner_targets
