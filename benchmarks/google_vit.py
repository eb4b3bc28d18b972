"""Google's official Flax ViT (vision_transformer's vit_jax/models_vit.py), for side-by-side timing.

Not shipped with this project: pass a checkout of
github.com/google-research/vision_transformer with `--google-vit DIR`. Its
parameter names are ours, so the same params run in both models.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

from vit_jax.config import ViTConfig


def load_models_vit(checkout: str) -> types.ModuleType:
    """Google's `models_vit` module from a vision_transformer checkout (or its vit_jax folder)."""
    root = Path(checkout)
    folder = root / "vit_jax" if (root / "vit_jax" / "models_vit.py").exists() else root
    path = folder / "models_vit.py"
    if not path.exists():
        raise FileNotFoundError(f"no models_vit.py under {checkout!r} (expected a google-research/vision_transformer "
                                "checkout)")
    # models_vit does `from vit_jax import models_resnet`, and our package is also
    # called vit_jax: bind that one import to Google's file before loading.
    resnet_spec = importlib.util.spec_from_file_location("google_models_resnet", folder / "models_resnet.py")
    resnet = importlib.util.module_from_spec(resnet_spec)
    resnet_spec.loader.exec_module(resnet)
    import vit_jax

    vit_jax.models_resnet = resnet  # what `from vit_jax import models_resnet` reads
    spec = importlib.util.spec_from_file_location("google_models_vit", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["google_models_vit"] = module
    spec.loader.exec_module(module)
    return module


def official_apply(checkout: str, config: ViTConfig) -> Callable:
    """apply(params, images, train) of Google's VisionTransformer for `config` (dropout off)."""
    if config.classifier not in ("token", "gap") or config.posemb != "learn" or not config.qkv_bias:
        raise ValueError(f"Google's model has no equivalent of {config.name}'s classifier/posemb/qkv_bias")
    models_vit = load_models_vit(checkout)
    model = models_vit.VisionTransformer(
        num_classes=config.num_classes,
        patches=types.SimpleNamespace(size=config.patch_hw),
        transformer=dict(
            num_layers=config.num_layers,
            mlp_dim=config.mlp_dim,
            num_heads=config.num_heads,
            dropout_rate=0.0,
            attention_dropout_rate=0.0,
        ),
        hidden_size=config.hidden_size,
        representation_size=config.representation_size,
        classifier=config.classifier,
    )
    return lambda params, images, train=False: model.apply({"params": params}, images, train=train)
