"""Hugging Face `ViTModel` / `ViTForImageClassification` naming, as renames of timm's.

Written in the classic layout of checkpoints on the Hub
(`vit.encoder.layer.{i}.attention.attention.query`, `classifier`), which every
transformers version loads (v5 renames on load). Also read: transformers v5's
own names (`vit.layers.{i}.attention.q_proj`). `ViTModel`'s pooler (Dense +
tanh on the class token) is the pre-logits layer. A directory target gets
`model.safetensors` and HF's `config.json`, so `from_pretrained(dir)` works.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.families.family import TRANSFORMERS_VIT_BLOCK
from vit_jax.formats import hf_families, hf_siglip
from vit_jax.formats.base import ConversionError, TensorSource, family_option_problems, vit_pytorch_option_problems
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

FORMAT = "hf"
# The plain ViTModel layout (model_type vit), which holds none of the families' options (vit_jax/options.py)
PLAIN_VIT_LAYOUT = "hf-vit"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# HF ViT: exact GELU ('gelu'), LayerNorm eps 1e-12 by default, mean = std = 0.5.
NUMERICS = {"gelu": "exact", "layer_norm_eps": 1e-12, "pixel_mean": (0.5, 0.5, 0.5), "pixel_std": (0.5, 0.5, 0.5)}
PREFIX = "vit."  # ViTForImageClassification wraps a ViTModel as `vit`; its `classifier` sits outside

TABLE = RenameTable([
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.{p}", "embeddings.patch_embeddings.projection.{p}"),
    *TRANSFORMERS_VIT_BLOCK,
    ("norm.{p}", "layernorm.{p}"),
    ("pre_logits.fc.{p}", "pooler.dense.{p}"),
    ("head.{p}", "classifier.{p}"),
])

_ACTIVATIONS = {"gelu": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}


def weights_in_dir(path: Path) -> Path | None:
    return next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)


def config_from_hf(hf: dict[str, Any], where: Path) -> dict[str, Any]:
    """ViTConfig fields stated by an HF ViT config.json."""
    if hf.get("model_type", "vit") != "vit":
        raise ConversionError(f"{where}: model_type {hf.get('model_type')!r} is not supported; expected one of "
                              f"{['vit', *hf_families.FAMILIES, *hf_siglip.MODEL_TYPES]}")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ConversionError(f"{where}: hidden_act {act!r} is not supported; expected one of {sorted(_ACTIVATIONS)}")
    fields = {"gelu": _ACTIVATIONS[act]}
    renames = {
        "hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
        "intermediate_size": "mlp_dim", "layer_norm_eps": "layer_norm_eps", "image_size": "image_size",
        "patch_size": "patch_size", "num_channels": "num_channels", "qkv_bias": "qkv_bias",
        "hidden_dropout_prob": "dropout_rate", "attention_probs_dropout_prob": "attention_dropout_rate",
    }
    fields.update({ours: hf[theirs] for theirs, ours in renames.items() if theirs in hf})
    return fields


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: not a readable JSON file ({e})") from None


def read(path: str | Path) -> TensorSource:
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    weights = weights_in_dir(path) if path.is_dir() else path
    if weights is None:
        raise ConversionError(f"{path}: directory has none of {list(WEIGHT_FILES)} (sharded checkpoints are not "
                              "supported)")
    data = _read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    if data.get("model_type") in hf_siglip.MODEL_TYPES:  # a MAP-pooled vision tower (vit_jax/formats/hf_siglip.py)
        source = hf_siglip.read(path, weights, data)
        source.stated.update(_preprocessor(directory))
        return source
    if data.get("model_type") in hf_families.FAMILIES:
        source = hf_families.read(path, weights, data)
        source.stated.update(_preprocessor(directory))
        return source
    source = read_file(weights, FORMAT, "hf", NUMERICS)
    stated = dict(source.stated)
    if data:
        stated.update(config_from_hf(data, directory / "config.json"))
    stated.update(_preprocessor(directory))
    source.stated = stated
    # Drop the `vit.` wrapper so one table covers ViTModel and ViTForImageClassification.
    renamed = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): k for k in source.shapes}
    inner = TensorSource(path=source.path, format=FORMAT, naming="hf",
                         shapes={k: source.shapes[v] for k, v in renamed.items()},
                         loader=lambda k: source.load(renamed[k]), names=renamed,
                         stated=stated, numerics=source.numerics)
    return TABLE.source_as_timm(inner, "Hugging Face")


def _preprocessor(directory: Path) -> dict[str, Any]:
    """The input normalisation a preprocessor_config.json states."""
    if (directory / "preprocessor_config.json").is_file():
        pre = _read_json(directory / "preprocessor_config.json")
        return {ours: tuple(pre[theirs]) for theirs, ours in (("image_mean", "pixel_mean"), ("image_std", "pixel_std"))
                if theirs in pre}
    return {}


def check_expressible(config) -> None:
    if config.classifier == "map":
        hf_siglip.check_expressible(config)
        return
    family = hf_families.family_for(config)
    if family is not None:
        hf_families.check_expressible(config, family)
        return
    problems = []
    if config.classifier != "token":
        problems.append(f"classifier {config.classifier!r} (HF ViT always has a class token and classifies it)")
    if config.is_hybrid:
        problems.append(f"a ResNet stem (resnet_layers={config.resnet_layers}; HF ViT has no hybrid: "
                        "use the timm or Google formats)")
    if config.posemb != "learn":
        problems.append(f"posemb {config.posemb!r} (HF ViT has only learned position embeddings)")
    problems += vit_pytorch_option_problems(config, "HF ViT")
    problems += family_option_problems(config, "HF ViT", PLAIN_VIT_LAYOUT)
    if config.representation_size is not None and config.num_classes:
        problems.append("representation_size with a classifier head (ViTForImageClassification has no pre-logits "
                        "layer; ViTModel's pooler holds it only when num_classes=0)")
    if problems:
        raise ConversionError(f"Hugging Face ViT cannot express this model: {'; '.join(problems)}")


def hf_config(config) -> dict[str, Any]:
    """An HF ViT config.json for `config` (transformers' ViTConfig.from_dict reads it)."""
    gelu = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}[config.gelu]
    out = {
        "model_type": "vit",
        "architectures": ["ViTForImageClassification" if config.num_classes else "ViTModel"],
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "intermediate_size": config.mlp_dim, "hidden_act": gelu,
        "hidden_dropout_prob": config.dropout_rate, "attention_probs_dropout_prob": config.attention_dropout_rate,
        "layer_norm_eps": config.layer_norm_eps, "image_size": config.image_size, "patch_size": config.patch_size,
        "num_channels": config.num_channels, "qkv_bias": config.qkv_bias, "encoder_stride": config.patch_hw[0],
    }
    if config.num_classes:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_classes)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(config.num_classes)}
    if config.representation_size is not None:
        out.update(pooler_output_size=config.representation_size, pooler_act="tanh")
    return out


def hf_names(tensors: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """timm-named tensors -> the HF state dict of ViTForImageClassification (or ViTModel if no head)."""
    renamed = TABLE.rename_to_other(tensors)
    if not config.num_classes:
        return renamed
    return {(k if k.startswith("classifier.") else PREFIX + k): v for k, v in renamed.items()}


def write(path: str | Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    if config.classifier == "map":  # a MAP-pooled tower is written as SiglipVisionModel
        hf_siglip.write(Path(path), tensors, config, like)
        return
    family = hf_families.family_for(config)
    if family is not None:  # a family's source keeps its transformers layout (vit_jax/formats/hf_families.py)
        hf_families.write(Path(path), tensors, config, family, like)
        return
    check_expressible(config)
    state = hf_names(tensors, config)
    tensors.clear()
    path = Path(path)
    if str(like).endswith((".safetensors", ".bin", ".pt", ".pth")):
        write_file(path, state, like, metadata={"format": "pt"})
        return
    path.mkdir()
    write_file(path / "model.safetensors", state, "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config), indent=2))
