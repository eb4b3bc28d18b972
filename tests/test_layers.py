"""The layering (pyproject.toml's import-linter contracts, docs/design.md "Layers") holds, and breaking it fails.

`lint-imports` itself runs in .ci/run; here a violation planted in a copy of the packages shows that the
contracts catch one, and the twin reads checkpoints in a process where JAX, Flax and orbax cannot import.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from train_runs import REPO, train_env

from vit_jax.config import get_config
from vit_jax.formats import flax_ckpt
from vit_jax.formats.mapping import expected_flax_shapes

PACKAGES = ("vit_jax", "vit_torch_ref", "parity")


def _lint_imports(root) -> subprocess.CompletedProcess:
    env = {**train_env(), "PYTHONPATH": str(root)}
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", command, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_planted_import_of_jax_in_the_formats_layer_breaks_its_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(Path(REPO) / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(REPO) / "pyproject.toml", tmp_path / "pyproject.toml")
    mapping = tmp_path / "vit_jax" / "formats" / "mapping.py"
    # Inside a function, as a "lazy" import would be: the contract still counts it.
    mapping.write_text(mapping.read_text() + "\n\ndef _planted():\n    import jax.numpy\n\n    return jax.numpy\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    out = " ".join(result.stdout.split())
    assert "The formats layer is framework-free (torch only in the .pt pickle codec) BROKEN" in out, out[-3000:]
    assert "vit_jax.formats is not allowed to import jax: - vit_jax.formats.mapping -> jax" in out, out[-3000:]
    # The twin reads through mapping.py, so its contract breaks with it (an indirect import); the rest hold.
    assert "The twin imports neither JAX nor parity BROKEN" in out, out[-2000:]
    assert "Contracts: 5 kept, 2 broken." in out, out[-2000:]


def test_the_twin_reads_flax_files_with_jax_flax_and_orbax_unimportable(tmp_path):
    config = get_config("ViT-testing")
    rng = np.random.default_rng(0)
    flat = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in expected_flax_shapes(config).items()}
    path = tmp_path / "vit.msgpack"
    flax_ckpt.write(path, dict(flat))
    (tmp_path / "vit.msgpack.json").write_text(config.to_json())
    code = (
        "import sys\n"
        "for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'parity'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "import torch, vit_torch_ref\n"
        f"config, model = vit_torch_ref.load_pretrained({str(path)!r})\n"
        "print(tuple(model(torch.zeros(1, 3, 16, 16)).shape), float(model.head.bias[0]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=train_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    shape, bias = result.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert shape == "(1, 10)" and float(bias) == float(flat["head/bias"][0])
