"""The training state: everything a resumed run needs besides the data position."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """Step, float32 master params, optimizer state and the run's base RNG key.

    `rng` is raw uint32 key data (checkpoints store plain arrays); each step
    derives its own key by folding in the step number, so the random stream
    of a resumed run is the one it would have had without stopping.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create_train_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    # Master weights stay float32 whatever the compute dtype (ViTConfig.dtype).
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
