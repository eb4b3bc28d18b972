"""Training recipes beyond the 2020 one: the weights' moving average (--model-ema-decay), layer decay.

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
from torchvision_stub import import_timm
from train_runs import TINY, assert_equal_trees

from vit_jax import get_config
from vit_jax import train_cli as train
from vit_jax.formats.mapping import flatten, flax_to_torch
from vit_jax.model import param_shapes
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


@pytest.mark.slow  # three short runs of a tiny model: 13 s on a quiet 2-core machine, 27 s on a busy one
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


LAYER_DECAY = 0.7


def layer_decay_formula(name: str, depth: int) -> float:
    """timm: decay ** (depth + 1 - layer_id); layer_id 0 embeddings, i + 1 block i, depth the final norm,
    depth + 1 the head."""
    if name.startswith("Transformer/encoderblock_"):
        layer_id = int(name.split("/")[1].rsplit("_", 1)[1]) + 1
    elif name.startswith("Transformer/encoder_norm"):
        layer_id = depth
    elif name.startswith(("head", "MAPHead_0")):
        layer_id = depth + 1
    else:
        layer_id = 0
    return LAYER_DECAY ** (depth + 1 - layer_id)


@pytest.mark.parametrize("overrides", [{}, {"classifier": "map", "num_register_tokens": 2}])
def test_layer_decay_multiplier_of_every_parameter_equals_the_formula(overrides):
    config = get_config("ViT-testing").replace(num_layers=3, **overrides)
    params = param_shapes(config)
    multipliers = flatten(optim.layer_decay_multipliers(params, LAYER_DECAY))
    assert set(multipliers) == set(flatten(params))
    for name, got in multipliers.items():
        assert got == pytest.approx(layer_decay_formula(name, 3)), name
    assert multipliers["embedding/kernel"] == pytest.approx(LAYER_DECAY**4) and multipliers["head/kernel"] == 1.0
    # A scanned stack holds block i's multiplier at index i of its leading axis.
    scanned = flatten(optim.layer_decay_multipliers(param_shapes(config.replace(scan=True)), LAYER_DECAY))
    stacked = scanned["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]
    np.testing.assert_allclose(stacked.ravel(), [LAYER_DECAY**3, LAYER_DECAY**2, LAYER_DECAY], rtol=1e-6)
    assert stacked.shape == (3, 1, 1)


def test_layer_decay_groups_match_timms_param_groups():
    """Each timm tensor's lr_scale from timm's param_groups_layer_decay is our multiplier for the same weights."""
    timm = import_timm()
    if timm is None:
        pytest.skip("timm is not installed")
    from timm.optim._param_groups import param_groups_layer_decay

    config = get_config("ViT-testing").replace(num_layers=3)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.hidden_size, depth=3,
        num_heads=config.num_heads, mlp_ratio=config.mlp_dim / config.hidden_size, num_classes=config.num_classes)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=LAYER_DECAY)
    names = {id(p): n for n, p in model.named_parameters()}
    timm_scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    # Our multipliers as constant tensors, renamed to timm's names by the project's own converter.
    params = param_shapes(config)
    filled = jax.tree.map(lambda p, m: np.full(p.shape, m, np.float32), params,
                          optim.layer_decay_multipliers(params, LAYER_DECAY))
    ours = flax_to_torch(filled, config)
    assert set(ours) == set(timm_scale)
    for name, tensor in ours.items():
        np.testing.assert_allclose(np.asarray(tensor), timm_scale[name], rtol=1e-6, err_msg=name)


def test_layer_decay_scales_each_parameters_step():
    params = {"embedding": {"kernel": jnp.ones((2, 2))},
              "Transformer": {"encoderblock_0": {"Dense_0": {"kernel": jnp.ones((2, 2))}}},
              "head": {"kernel": jnp.ones((2, 2))}}
    schedule = optim.learning_rate_schedule(0.1, 10, 0, "constant")
    tx = optim.make_optimizer(params, name="sgd", schedule=schedule, weight_decay=0.0, grad_clip=0.0, momentum=0.0,
                              layer_decay=0.5)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    got = {name: float(u[0, 0]) for name, u in flatten(updates).items()}
    # one block: the embeddings get 0.5 ** 2, block 0 0.5 ** 1, the head 1
    assert got == pytest.approx({"embedding/kernel": -0.025, "Transformer/encoderblock_0/Dense_0/kernel": -0.05,
                                 "head/kernel": -0.1})


@pytest.mark.slow  # one 80-step digits run: ~11 s on a quiet 2-core machine
def test_digits_run_with_every_recipe_flag_trains(tmp_path, capsys):
    from train_runs import records

    workdir = str(tmp_path / "run")
    args = TINY + ["--steps", "80", "--batch-size", "64", "--eval-every", "80", "--log-every", "10",
                   "--warmup-steps", "5", "--lr", "1e-2", "--label-smoothing", "0", "--optimizer", "lion",
                   "--layer-decay", "0.8", "--model-ema-decay", "0.9", "--aa", "rand-m5-n1-mstd0.5-inc1",
                   "--reprob", "0.25", "--remode", "pixel", "--recount", "2", "--mixup-alpha", "0.2",
                   "--workdir", workdir]
    assert train.main(args) == 0
    losses = [r["loss"] for r in records(workdir)]
    assert losses[-1] < 0.88 * losses[0], losses  # 2.30 -> 1.92 here: 80 steps of a 1-block model, augmented
    [evaluation] = records(workdir, "eval")
    assert evaluation["accuracy"] > 0.25, evaluation  # chance is 0.1
    assert "eval (EMA weights) accuracy" in capsys.readouterr().out
