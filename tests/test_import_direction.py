"""parity builds on vit_jax; vit_jax.pretrained is the one vit_jax module on top of parity, imported at its top."""

from __future__ import annotations

import subprocess
import sys

import pytest
from train_runs import REPO, train_env


@pytest.mark.parametrize("statement, loaded, not_loaded", [
    ("import vit_jax", [], ["parity", "vit_jax.pretrained", "jax"]),
    ("import vit_jax.pretrained", ["parity.convert", "vit_jax.pretrained"], []),
    ("import parity", ["vit_jax.formats.mapping"], ["vit_jax.pretrained"]),
    ("import parity.convert", ["parity.convert"], ["vit_jax.pretrained"]),
    ("from vit_jax import load_pretrained", ["parity.convert"], []),
])
def test_imports_run_one_way_in_a_fresh_process(statement, loaded, not_loaded):
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('vit_jax', 'parity', 'jax')))"
    result = subprocess.run([sys.executable, "-c", code], env=train_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = set(eval(result.stdout.strip().splitlines()[-1]))
    assert set(loaded) <= modules, modules
    assert not set(not_loaded) & modules, modules


def test_pretrained_has_no_call_time_import_of_parity():
    import inspect

    import vit_jax.pretrained

    source = inspect.getsource(vit_jax.pretrained.load_pretrained)
    assert "import" not in source


def test_the_torch_twin_imports_and_runs_without_jax_or_flax():
    """vit_torch_ref needs the framework-neutral config only: with JAX and Flax unimportable it still builds and runs."""
    code = (
        "import sys\n"
        "for name in ('jax', 'jaxlib', 'flax', 'optax'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import torch, vit_torch_ref\n"
        "model = vit_torch_ref.VisionTransformer(vit_torch_ref.get_config('ViT-testing'))\n"
        "print(tuple(model(torch.zeros(1, 3, 16, 16)).shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=train_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "(1, 10)"
