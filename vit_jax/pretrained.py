"""Load pretrained ViT weights from any supported checkpoint format in one call.

    config, params = vit_jax.load_pretrained("ViT-B_16.npz", image_size=384, num_classes=10)
    logits = vit_jax.VisionTransformer(config).apply({"params": params}, images)

Formats: Google `.npz`, Flax msgpack or orbax directory, timm-named
`.safetensors`/`.pt`, Hugging Face ViT, torchvision ViT, vit-pytorch (see
`python -m parity convert --help`), and this project's training runs (a
train.py --workdir, its checkpoints/ or one step directory; `step` picks the
checkpoint, by default the best by eval accuracy, else the latest). The
architecture is read from the tensors (for a run, from its config.json);
numerics (GELU form, LayerNorm epsilon, input normalisation) follow the
checkpoint's framework, or the config JSON written beside it by the converter.

The readers and the mapping table are vit_jax.formats, the framework-free
bottom layer that the torch twin's `load_pretrained` reads through as well.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.formats import ConversionError
from vit_jax.formats.mapping import expected_flax_shapes, flatten
from vit_jax.formats.read import read_flax_params
from vit_jax.formats.training_run import RUN_CONFIG, read_run_config
from vit_jax.params import unstack_block_params


def load_pretrained(
    path: str | os.PathLike,
    config: ViTConfig | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    format: str | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
    nnx: bool = False,
) -> tuple[ViTConfig, Any]:
    """(config, Flax params as NumPy arrays) for the checkpoint at `path`; with `nnx`, (config, the NNX model
    holding them: vit_jax.nnx_model).

    `path` may be a hub name, `hf-hub:ORG/NAME[@REVISION]`, read through huggingface_hub's cache.
    `config` (a ViTConfig, a preset name or a config JSON path) fills what the
    tensors do not show; a ViTConfig or JSON also sets numerics and runtime
    options (dtype, scan, remat, dropout), and the params come back in its
    layout (scanned or per-block). `image_size` resizes the position
    embeddings (Google's bilinear resize); `num_classes` replaces the head by a
    fresh zero head; `step` picks a training run's checkpoint; `overrides`
    states config fields outright, as `convert --set` (a vit-pytorch file's
    heads: `format="vit-pytorch", overrides={"num_heads": 8}`). Weights must be
    floating point, and finite unless `allow_nonfinite`. Raises
    `vit_jax.formats.ConversionError` on a bad file.
    """
    config, params = read_flax_params(path, format=format, config=config, image_size=image_size,
                                      num_classes=num_classes, step=step, allow_nonfinite=allow_nonfinite,
                                      overrides=overrides)
    if nnx:
        from vit_jax.nnx_model import nnx_model  # Flax NNX only for those who ask for it

        return config, nnx_model(config, params)
    return config, params


def load_run(run_dir: str, step: int | None) -> tuple[ViTConfig, dict, dict, int]:
    """(model config, params in the run's layout, run config, step) of a train.py run directory.

    The run's own config rules (no inference from the tensors); the checkpoint
    is restored as training saved it, the best by eval accuracy by default.
    Raises CheckpointError naming what is missing, damaged or mismatched.
    """
    from vit_jax.training.checkpoint import Checkpointer, CheckpointError

    config_path = os.path.join(run_dir, RUN_CONFIG)
    try:
        run = read_run_config(run_dir)
        model = ViTConfig.from_dict(run["model"])
    except (ConversionError, ConfigError, TypeError) as error:
        raise CheckpointError(str(error)) from None
    checkpoints = Checkpointer(run_dir, read_only=True)
    try:
        step, params = checkpoints.restore_params(step)
    finally:
        checkpoints.close()
    check_params_match(model, params, config_path, f"checkpoint step {step} in {checkpoints.directory}")
    return model, params, run, step


def check_params_match(model: ViTConfig, params: dict, config_name: str, checkpoint_name: str) -> None:
    """The params have exactly the tensors and shapes `model` needs, else a CheckpointError naming both."""
    from vit_jax.training.checkpoint import CheckpointError

    expected = expected_flax_shapes(model)
    found = flatten(unstack_block_params(params))
    for key in sorted(set(expected) | set(found)):
        want = expected.get(key)
        have = tuple(np.shape(found[key])) if key in found else None
        if want != have:
            detail = (f"the checkpoint has no {key!r}" if have is None else
                      f"the checkpoint has {key!r} {have}, which the config does not expect" if want is None else
                      f"{key!r} is {have} in the checkpoint, {want} by the config")
            raise CheckpointError(f"{config_name} does not match {checkpoint_name}: {detail}")
