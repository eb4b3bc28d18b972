"""The model in Flax NNX: the Linen VisionTransformer wrapped by Flax's own bridge, `flax.nnx.bridge.ToNNX`.

    model = vit_jax.nnx_model(config, params)           # or vit_jax.load_pretrained(path, nnx=True)[1]
    logits = model(images)                              # the Linen model's apply, same arguments
    logits = model(images, train=True)                  # dropout from the module's own 'dropout' stream
    final, features = model(images, indices=4, method="forward_intermediates")
    grads = nnx.grad(lambda m: loss(m(images)))(model)  # an nnx.State with the Linen param tree
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

The bridge rather than a second, native NNX model: one definition of the network, so the two forms cannot
drift apart, and the parameter tree is the Linen one (Google's names) by construction; NNX code holds it as an
ordinary `nnx.Module` (nnx.jit, nnx.grad, nnx.Optimizer, nnx.split/merge). See docs/design.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge
from flax.traverse_util import flatten_dict

from vit_jax.config import ViTConfig
from vit_jax.model import VisionTransformer


def nnx_model(config: ViTConfig, params: dict[str, Any] | None = None, seed: int = 0) -> bridge.ToNNX:
    """VisionTransformer(config) as an NNX module holding `params` (a Linen 'params' tree), or fresh ones.

    `seed` seeds the fresh parameters and the module's dropout stream. Given params are checked against the
    model's tree (a missing or extra entry is a ValueError naming it); nothing is initialised for them.
    """

    def build() -> bridge.ToNNX:
        model = bridge.ToNNX(VisionTransformer(config), rngs=nnx.Rngs(params=seed, dropout=seed + 1))
        return bridge.lazy_init(model, jnp.zeros((1, *config.image_hw, config.num_channels), jnp.float32))

    if params is None:
        return build()
    graphdef, param_state, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)  # shapes only
    expected = {path: value.shape for path, value in flatten_dict(nnx.to_pure_dict(param_state), sep="/").items()}
    given = {path: jnp.shape(value) for path, value in flatten_dict(params, sep="/").items()}
    for path in sorted(set(expected) | set(given)):
        if expected.get(path) != given.get(path):
            raise ValueError(f"the params do not fit VisionTransformer({config.name}): {path!r} is "
                             f"{given.get(path, 'missing')}, expected {expected.get(path, 'no such parameter')}")
    nnx.replace_by_pure_dict(param_state, jax.tree.map(jnp.asarray, params))
    model = nnx.merge(graphdef, param_state, rest)
    model.to_nnx__rngs = nnx.Rngs(params=seed, dropout=seed + 1)  # the shapes-only build left abstract keys
    return model
