"""Training recipes beyond the 2020 one: the weights' moving average (--model-ema-decay).

The formula test drives the optimizer by hand; the run test goes through the command's own path
(`train_cli.main` -> `loop.fit`) on three steps of a tiny model, as test_train_resume_state.py does.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_resume_state import assert_equal_trees
from train_runs import TINY

from vit_jax import train_cli as train
from vit_jax.training import loop, optim
from vit_jax.training.checkpoint import Checkpointer


def test_ema_weights_equal_the_formula_after_k_steps():
    """ema_k = d^k p_0 + sum_i (1 - d) d^(k-i) p_i over the params p_i after each step i."""
    decay, k = 0.8, 5
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    tx = optim.make_optimizer(params, name="adamw", schedule=optim.learning_rate_schedule(0.1, 10, 0, "constant"),
                              weight_decay=0.1, grad_clip=0.0, ema_decay=decay)
    opt_state, history = tx.init(params), [params]
    rng = np.random.default_rng(0)
    for _ in range(k):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree.map(jnp.add, params, updates)
        history.append(params)
    weights = [decay**k] + [(1 - decay) * decay ** (k - i) for i in range(1, k + 1)]
    expected = jax.tree.map(lambda *ps: sum(w * p for w, p in zip(weights, ps)), *history)
    ema = optim.ema_params(opt_state)
    for got, want in zip(jax.tree.leaves(ema), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert optim.ema_params(optim.make_optimizer(params, name="adamw", schedule=lambda _: 0.1, weight_decay=0.0,
                                                 grad_clip=0.0).init(params)) is None


@pytest.mark.slow  # three short runs of a tiny model: ~25 s on a busy 2-core machine
def test_ema_is_evaluated_checkpointed_and_restored_on_resume(tmp_path, monkeypatch, capsys):
    saved, evaluated, restored = [], [], []
    save, evaluate, restore_latest = Checkpointer.save, loop.evaluate, loop.restore_latest

    def recording_save(self, step, host_state, data_state, metrics=None):
        saved.append((step, jax.tree.map(np.array, host_state)))
        return save(self, step, host_state, data_state, metrics)

    def recording_evaluate(eval_step, params, *args):
        evaluated.append(jax.tree.map(np.array, params))
        return evaluate(eval_step, params, *args)

    def recording_restore_latest(run, loader):
        state, step = restore_latest(run, loader)
        restored.append(jax.tree.map(np.array, state))
        return state, step

    monkeypatch.setattr(Checkpointer, "save", recording_save)
    monkeypatch.setattr(loop, "evaluate", recording_evaluate)
    monkeypatch.setattr(loop, "restore_latest", recording_restore_latest)
    workdir = str(tmp_path / "run")
    args = TINY + ["--steps", "3", "--batch-size", "16", "--checkpoint-every", "2", "--eval-every", "2",
                   "--warmup-steps", "0", "--model-ema-decay", "0.5", "--workdir", workdir]
    assert train.main(args) == 0
    (_, at_2), (_, at_3) = saved
    ema_2 = optim.ema_params(at_2.opt_state)
    # The checkpoint holds the average, which is not the params; eval at step 2 used the average.
    assert ema_2 is not None and not np.allclose(jax.tree.leaves(ema_2)[0], jax.tree.leaves(at_2.params)[0])
    assert_equal_trees(evaluated[0], ema_2, "weights evaluated at step 2")
    assert "eval (EMA weights) accuracy" in capsys.readouterr().out

    shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))  # stopped after checkpoint 2
    assert train.main(["--resume", "--workdir", workdir]) == 0
    assert_equal_trees(optim.ema_params(restored[0].opt_state), ema_2, "restored EMA")
    assert_equal_trees(optim.ema_params(saved[2][1].opt_state), optim.ema_params(at_3.opt_state), "EMA at step 3")

    capsys.readouterr()
    assert train.main(["--eval-only", "--workdir", workdir, "--eval-step", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["weights"] == "ema"
    assert_equal_trees(evaluated[-1], ema_2, "weights --eval-only evaluated")


def test_model_ema_decay_is_checked():
    from vit_jax.config import ConfigError
    from vit_jax.training.config import TrainConfig

    with pytest.raises(ConfigError, match=r"--model-ema-decay must be in \[0, 1\), got 1.0"):
        TrainConfig(model_ema_decay=1.0)
