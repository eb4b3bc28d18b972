"""Forward and backward passes over the model one block at a time, on several sides in lockstep; the report's
comparison of the four sides (`compare`) and their loss curves (`loss_curves`).

A pass holds, per side, the inputs of the blocks (one activation each) and
one group's parameters at a time, never every intermediate or every gradient
of the model. Parameters come from `params_of(side, group)`, made when the
group runs, in the side's own form (`Side.own`); what each stage computes goes
to callbacks, which compare it and let it go:

- on_layers(list of {canonical name: array}, one per side) after each stage of the forward;
- on_grads(group, list of gradients, one per side, in the side's own form) as each group's gradients are
  known, top block first, the parameters outside the blocks last.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from parity.harness import OUTER, AdamWSettings, Flat, Master, Side, groups
from parity.judge import Measured, measure
from vit_jax.config import ViTConfig

ParamsOf = Callable[[Side, "int | None"], Any]  # a group's parameters in the side's own form
OnLayers = Callable[[list[dict[str, np.ndarray]]], None]
OnGrads = Callable[["int | None", list[Any]], None]
_NONE = object()  # no group (OUTER is None)


def forward(sides: Sequence[Side], params_of: ParamsOf, config: ViTConfig, data: list[tuple],
            on_layers: OnLayers | None) -> list[list]:
    """Embedding, then each block on its side's previous output. Returns each side's block inputs and last output."""
    report = on_layers or (lambda layers: None)
    results = [side.embed(params_of(side, OUTER), images) for side, (images, _) in zip(sides, data)]
    report([inter for _, inter in results])
    saved = [[x] for x, _ in results]
    for index in range(config.num_layers):
        results = [side.block(index, params_of(side, index), held[-1]) for side, held in zip(sides, saved)]
        report([inter for _, inter in results])
        for held, (y, _) in zip(saved, results):
            held.append(y)
    return saved


def head(sides: Sequence[Side], params_of: ParamsOf, data: list[tuple], saved: list[list],
         on_layers: OnLayers | None) -> list[float]:
    """The head stage's forward (norm, pooling, logits) on the last block's output; each side's loss."""
    results = [side.head(params_of(side, OUTER), images, held[-1], targets)
               for side, (images, targets), held in zip(sides, data, saved)]
    if on_layers:
        on_layers([inter for _, inter in results])
    return [loss for loss, _ in results]


def backward(sides: Sequence[Side], params_of: ParamsOf, config: ViTConfig, data: list[tuple], saved: list[list],
             on_grads: OnGrads, on_layers: OnLayers | None = None) -> list[float]:
    """The head stage's forward and VJP (its layers to `on_layers`): the loss cotangent enters there. Going down,
    each block's forward is recomputed from its saved input for its VJP, and the cotangent of its input passed
    on. Returns each side's loss."""
    results = [side.head_vjp(params_of(side, OUTER), images, held[-1], targets)
               for side, (images, targets), held in zip(sides, data, saved)]
    if on_layers:
        on_layers([inter for *_, inter in results])
    losses = [loss for loss, *_ in results]
    outer_head = [grads for _, grads, _, _ in results]
    cotangents = [cotangent for _, _, cotangent, _ in results]
    for index in reversed(range(config.num_layers)):
        results = [side.block_vjp(index, params_of(side, index), held[index], cotangent)
                   for side, held, cotangent in zip(sides, saved, cotangents)]
        for held in saved:
            held[index + 1] = None  # this block's output: no longer needed
        cotangents = [cotangent for _, cotangent in results]
        on_grads(index, [grads for grads, _ in results])
    outer = [side.add(head_grads, side.embed_vjp(params_of(side, OUTER), images, cotangent))
             for side, (images, _), head_grads, cotangent in zip(sides, data, outer_head, cotangents)]
    on_grads(OUTER, outer)
    return losses


def train(side: Side, master: Master, config: ViTConfig, images: np.ndarray, targets: np.ndarray,
          settings: AdamWSettings, steps: int) -> list[float]:
    """`steps` AdamW steps of one side on the same batch, block by block; the loss of each step before its update.

    Holds this side's parameters and optimizer state (the model's, in its dtype), one side at a time.
    """
    params = {group: side.params(master, group) for group in groups(config)}
    optimizer = side.optimizer(settings)
    data = [side.inputs(images, targets)]
    losses = []

    def update(group, grads):
        params[group] = optimizer.step(group, params[group], grads[0])

    for _ in range(steps):
        saved = forward([side], lambda s, group: params[group], config, data, None)
        losses += backward([side], lambda s, group: params[group], config, data, saved, update)
    return losses


# -- the report: four sides in lockstep, compared as they go ------------------------
def _measure_into(measured: dict[str, Measured], tensors: list[dict[str, np.ndarray]], clock: dict) -> None:
    """Compare one stage's tensors of the four sides (same keys) and keep only the comparisons."""
    start = time.perf_counter()
    for key in tensors[0]:
        measured[key] = measure(*(t[key] for t in tensors))
    clock["compare"] = clock.get("compare", 0.0) + time.perf_counter() - start


def _first_step(sides, optimizers, params_of, group, grads) -> list[Flat]:
    """Each side's parameters of `group` after one AdamW step from the report's weights."""
    updated = []
    for side, optimizer, side_grads in zip(sides, optimizers, grads):
        updated.append(side.flat(group, optimizer.step(group, params_of(side, group), side_grads)))
        optimizer.forget(group)  # one step only: the state goes with the group
    return updated


def compare(sides: list[Side], master: Master, config: ViTConfig, images: np.ndarray, targets: np.ndarray,
            gradients: bool, settings: AdamWSettings | None,
            clock: dict) -> tuple[dict[str, dict[str, Measured]], list[float]]:
    """One forward (and backward) pass of the four sides in lockstep, block by block: every canonical layer,
    gradient and (with `settings`) first-step update measured as it is computed. Returns the comparisons by
    section and each side's loss."""
    measured: dict[str, dict[str, Measured]] = {"forward": {}, "gradients": {}, "update": {}}
    held: list = [_NONE, {}]  # the group last read from `master` and its arrays: the four sides share one read

    def params_of(side, group):  # made when the group runs: its only copy in the side's dtype
        if held[0] != group:  # a checkpoint's master reads the file on each lookup: once per group, not per side
            held[:] = [_NONE, {}]  # the previous group's arrays go before the next group's are read
            held[:] = [group, {p: master[p] for p in side.paths(group)}]
        return side.params(held[1], group)

    def on_grads(group, grads):
        _measure_into(measured["gradients"], [side.flat(group, g) for side, g in zip(sides, grads)], clock)
        if optimizers:
            _measure_into(measured["update"], _first_step(sides, optimizers, params_of, group, grads), clock)

    data = [side.inputs(images, targets) for side in sides]
    on_layers = lambda layers: _measure_into(measured["forward"], layers, clock)  # noqa: E731
    saved = forward(sides, params_of, config, data, on_layers)
    if not gradients:
        return measured, head(sides, params_of, data, saved, on_layers)
    optimizers = [side.optimizer(settings) for side in sides] if settings else None
    return measured, backward(sides, params_of, config, data, saved, on_grads, on_layers)


def loss_curves(sides, master, config, images, targets, settings, steps, first_losses, clock) -> tuple:
    """Each side's losses over `steps` AdamW steps (one side at a time); the first is the lockstep pass's."""
    if steps == 1:
        return tuple([loss] for loss in first_losses)
    curves = []
    for side in sides:
        before = side.seconds
        # Every step sees the report's batch and labels: the model memorises them,
        # so a correct run shows both losses falling together.
        curves.append(train(side, master, config, images, targets, settings, steps))
        clock[f"{side.name} adamw"] = side.seconds - before
    return tuple(curves)
