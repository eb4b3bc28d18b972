"""--resume restores the optimizer state: a resumed run takes the step a run that never stopped takes.

In process and fast (no subprocess, three steps of a tiny model): the run saves checkpoints 2 and 3;
checkpoint 3 is then taken away, as a kill between the two would, and `--resume` continues from 2
through the command's own path (`train_cli.main` -> `loop.fit` -> `loop.restore_latest`). The slow SIGKILL test in
test_train_resume.py checks the same across processes.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import optax
import pytest
from train_runs import TINY, assert_equal_trees

from vit_jax import train_cli as train
from vit_jax.training import loop
from vit_jax.training.checkpoint import Checkpointer

ARGS = TINY + ["--steps", "3", "--batch-size", "16", "--checkpoint-every", "2", "--eval-every", "2",
               "--warmup-steps", "0", "--dropout-rate", "0.1"]
# The optimizer's own state: Adam's moments and step count, SGD's momentum buffer.
MOMENTS = {"adamw": (optax.ScaleByAdamState, ("mu", "nu", "count")), "sgd": (optax.TraceState, ("trace",))}


def moments(opt_state, optimizer: str) -> dict[str, list[np.ndarray]]:
    kind, fields = MOMENTS[optimizer]
    [state] = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kind)) if isinstance(s, kind)]
    return {name: jax.tree.leaves(getattr(state, name)) for name in fields}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resume_restores_optimizer_state_and_takes_the_uninterrupted_next_step(tmp_path, monkeypatch, optimizer):
    saved = []  # (step, host state) in the order the runs hand them to Checkpointer.save
    save = Checkpointer.save

    def recording_save(self, step, host_state, data_state, metrics=None):
        saved.append((step, jax.tree.map(np.array, host_state)))
        return save(self, step, host_state, data_state, metrics)

    restored = []
    restore_latest = loop.restore_latest

    def recording_restore_latest(run, loader):
        state, step = restore_latest(run, loader)
        # a host copy: the restored device arrays are donated to the next step
        restored.append((jax.tree.map(np.array, state), step))
        return state, step

    monkeypatch.setattr(Checkpointer, "save", recording_save)
    monkeypatch.setattr(loop, "restore_latest", recording_restore_latest)
    workdir = str(tmp_path / "run")
    assert train.main(ARGS + ["--optimizer", optimizer, "--workdir", workdir]) == 0
    assert [step for step, _ in saved] == [2, 3]
    (_, at_2), (_, at_3) = saved
    shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))  # stopped after checkpoint 2

    assert train.main(["--resume", "--workdir", workdir]) == 0
    [(state, step)] = restored
    assert step == 2 and int(state.step) == 2
    got, want = moments(state.opt_state, optimizer), moments(at_2.opt_state, optimizer)
    for name in got:
        assert_equal_trees(got[name], want[name], f"restored {optimizer} {name}")
        # two steps have filled them (a fresh state holds zeros), so the comparison can fail
        assert any(np.any(np.asarray(leaf) != 0) for leaf in want[name]), name
    assert_equal_trees(state, at_2, "restored state")

    # The resumed run's step 3 is the uninterrupted run's step 3, bit for bit.
    assert [step for step, _ in saved] == [2, 3, 3]
    resumed_3 = saved[2][1]
    assert_equal_trees(resumed_3.params, at_3.params, "params after step 3")
    for name, leaves in moments(resumed_3.opt_state, optimizer).items():
        assert_equal_trees(leaves, moments(at_3.opt_state, optimizer)[name], f"{optimizer} {name} after step 3")
