"""Google big_vision's two-tower `.npz`: the image tower written under `params/img/`.

big_vision's ViT (`big_vision/models/vit.py`) names its modules as this project's Linen model does
(`embedding`, `Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm`, `MAPHead_0/{probe,
MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}`, `head`), but keeps its learned position
embedding at the top, `pos_embedding`, covering the patches only (a class token is prepended after it is
added). Its two-tower model holds the image tower under `img/` (the text tower under `txt/`, with the logit
scale `t` and bias `b` beside them); the file is the flattened `params` tree. Only the image tower is
written; read back (as any `.npz`, vit_jax/formats/flax_names.py) the tensors are the same bytes.
big_vision computes the tanh GELU and LayerNorm eps 1e-6 and has no place for other numerics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vit_jax.formats import google_npz
from vit_jax.formats.base import ConversionError, vit_pytorch_option_problems
from vit_jax.options import OPTIONS, unheld_options

FORMAT = "big-vision"
EXTENSIONS = (".npz",)
TOWER = "params/img/"
_POSEMB = ("Transformer/posembed_input/pos_embedding", "pos_embedding")
# What big_vision's ViT computes beyond the families' options it cannot hold (vit_jax/options.py).
_FIXED = (("qkv_bias", True), ("posemb", "learn"), ("gelu", "tanh"), ("layer_norm_eps", 1e-6))


def read(path: str | Path):
    """A big_vision file reads as any Google `.npz` (its `params/img/` tower; the text tower is noted)."""
    return google_npz.read(path)


def check_expressible(config) -> None:
    """big_vision's ViT: pooling 'map', 'gap' or 'tok' (a class token without a position slot)."""
    problems = [f"{field}={getattr(config, field)!r} (expected {OPTIONS[field].default!r})"
                for field in unheld_options(config, FORMAT) if field != "head_bias"]
    problems += [f"{field}={getattr(config, field)!r} (expected {value!r})" for field, value in _FIXED
                 if getattr(config, field) != value]
    problems += vit_pytorch_option_problems(config, "big_vision's ViT")
    if config.classifier not in ("map", "gap", "token"):
        problems.append(f"classifier {config.classifier!r} (big_vision pools with 'map', 'gap' or a class token)")
    if config.classifier == "token" and config.posemb_class_slot:
        problems.append("a class token with a position slot (big_vision adds the position embedding to the patches, "
                        "then prepends the class token: posemb_class_slot=False)")
    if config.is_hybrid:
        problems.append("a ResNet stem")
    if config.num_classes and not config.head_bias:
        problems.append("a head without bias")
    if problems:
        hint = " (--set gelu=tanh states big_vision's GELU)" if config.gelu != "tanh" else ""
        raise ConversionError(f"big_vision's ViT cannot express this model: {'; '.join(problems)}{hint}")


def big_vision_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flax-named tensors -> big_vision's flattened two-tower params (the image tower)."""
    return {TOWER + (_POSEMB[1] if key == _POSEMB[0] else key): value for key, value in flat.items()}


def write(path: str | Path, flat: dict[str, np.ndarray], config=None, like=None) -> None:
    check_expressible(config)
    google_npz.write(path, big_vision_names(flat))
