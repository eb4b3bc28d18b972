"""timm hub directories: `config.json` ("architecture", "model_args", "pretrained_cfg") and `model.safetensors`.

What `timm.create_model('hf-hub:...')` downloads and timm's `save_for_hf` writes. The tensors are in timm's
naming (the mapping table's torch side); the architecture name and its arguments decide the numerics
through vit_jax/formats/timm_archs.py. Written back, `timm.create_model(architecture, **model_args)` (or
`timm.create_model('local-dir:DIR')`) loads the weights with strict=True.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.formats.base import (
    TIMM,
    ConversionError,
    TensorSource,
    vit_pytorch_option_problems,
)
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.timm_archs import (
    UnknownArchitecture,
    architecture_fields,
    model_args_fields,
    own_names,
    writer_architecture,
    writer_model_args,
)
from vit_jax.formats.torch_sd import read_file, write_file
from vit_jax.options import presence_options

FORMAT = "timm-hub"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm_dir(path: Path) -> bool:
    """A directory whose config.json names a timm architecture (a transformers one has "model_type")."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "architecture" in data and "model_type" not in data


def stated_fields(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields a timm config.json states: its architecture's, then its model_args, labels, mean/std."""
    arch = data.get("architecture")
    if not isinstance(arch, str):
        raise ConversionError(f"{where}: \"architecture\" is {arch!r}, expected a timm architecture name")
    args = data.get("model_args") or {}
    if not isinstance(args, dict):
        raise ConversionError(f"{where}: \"model_args\" is {type(args).__name__}, expected an object")
    try:
        fields = {**architecture_fields(arch), **model_args_fields(arch, args)}
    except UnknownArchitecture as e:
        raise ConversionError(f"{where}: {e}") from None
    fields["name"] = arch
    if "num_classes" in data and "num_classes" not in args:
        fields["num_classes"] = data["num_classes"]
    pretrained = data.get("pretrained_cfg") or {}
    for theirs, ours in (("mean", "pixel_mean"), ("std", "pixel_std")):
        if theirs in pretrained:
            fields[ours] = tuple(pretrained[theirs])
    return fields


def read(path: str | Path) -> TensorSource:
    path = Path(path)
    config = path / "config.json"
    weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise ConversionError(f"{path}: a timm hub directory without weights (none of {list(WEIGHT_FILES)})")
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{config}: not a readable JSON file ({e})") from None
    stated = stated_fields(data, config)
    source = read_file(weights, FORMAT, TIMM, {})
    source.stated = {**source.stated, **stated}
    names = own_names(stated["name"], data.get("model_args") or {})
    if names is not None:  # the class's own names (Eva: gamma_1, q_proj, ...) -> the mapping table's
        source = RenameTable(names).source_as_timm(source, f"timm {stated['name']}")
    _check_implied_tensors(source, stated, data.get("model_args") or {}, config, weights.name)
    return source


def _check_implied_tensors(source: TensorSource, stated: dict[str, Any], args: dict[str, Any], config: Path,
                           weights: str) -> None:
    """The tensors the architecture and its model_args imply (ln_pre, fc_norm, LayerScale, ...) are there, and
    those they rule out are not: timm itself refuses to load such a directory."""
    for field, (_, key) in presence_options().items():
        if field not in stated or stated[field] == (key in source.shapes):
            continue
        if field == "fc_norm" and args.get("fc_norm", args.get("use_fc_norm")) is None and "global_pool" in args:
            who = f"model_args global_pool={args['global_pool']!r} (timm's fc_norm={stated[field]})"
        elif field in model_args_fields(stated["name"], args):
            who = f"model_args ({field}={stated[field]})"
        else:
            who = f"architecture {stated['name']!r} ({field}={stated[field]})"
        raise ConversionError(f"{config}: {who} implies tensor {source.file_name(key)!r}, which {weights} "
                              f"{'lacks' if stated[field] else 'has'}")


def check_expressible(config) -> None:
    """timm's VisionTransformer options; refuse what it cannot compute."""
    problems = []
    if config.is_hybrid:
        problems.append("a ResNet stem (timm names hybrids by their stem: use the torch format, .safetensors)")
    problems += vit_pytorch_option_problems(config, "timm's VisionTransformer")
    if config.posemb != "learn":
        problems.append(f"posemb {config.posemb!r}")
    if config.representation_size is not None:
        problems.append("representation_size (timm's ViT has no pre-logits layer)")
    if config.classifier == "map" and (config.has_class_token or config.num_register_tokens):
        problems.append("a MAP head with prefix tokens (timm's MAP-pooled ViTs have none)")
    if config.num_classes and not config.head_bias:
        problems.append("a head without bias (timm's head always has one)")
    if config.patch_bias == config.pre_norm:
        problems.append(f"patch_bias={config.patch_bias} with pre_norm={config.pre_norm} (timm's patch embedding "
                        "has a bias exactly when there is no pre-norm)")
    if config.num_register_tokens and config.posemb_class_slot:
        problems.append("register tokens with a class slot in the position embedding (timm would give the "
                        "registers positions too; transformers' register layout: use --to hf)")
    try:
        writer_architecture(config)
    except UnknownArchitecture as e:
        problems.append(str(e))
    if problems:
        raise ConversionError(f"a timm hub directory cannot express this model: {'; '.join(problems)}")


def hub_config(config) -> dict[str, Any]:
    """config.json as timm's save_for_hf writes it, with model_args that rebuild `config` exactly."""
    (h, w) = config.image_hw
    return {
        "architecture": writer_architecture(config), "num_classes": config.num_classes,
        "num_features": config.hidden_size, "global_pool": writer_model_args(config)["global_pool"],
        "model_args": writer_model_args(config),
        "pretrained_cfg": {"input_size": [config.num_channels, h, w], "fixed_input_size": True,
                           "mean": list(config.pixel_mean), "std": list(config.pixel_std),
                           "num_classes": config.num_classes, "first_conv": "patch_embed.proj",
                           "classifier": "head"},
    }


def write(path: str | Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    check_expressible(config)
    tensors.pop("mask_token", None)  # transformers' mask token; timm's ViT has none (inference never reads it)
    path = Path(path)
    path.mkdir()
    hub = hub_config(config)
    names = own_names(hub["architecture"], hub["model_args"])
    if names is not None:
        tensors = RenameTable(names).rename_to_other(tensors)
    write_file(path / "model.safetensors", tensors, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hub, indent=2))
