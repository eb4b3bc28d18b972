"""Placeholders for the torchvision names timm imports at load time, so timm's real
VisionTransformer can be built here.

torchvision cannot be imported on this machine (its only wheel is a CUDA build
that fails with CPU torch). timm imports torchvision only for data transforms,
datasets, FX feature extraction and FrozenBatchNorm2d, none of which a
VisionTransformer touches: every such name resolves to an inert placeholder
class. The ViT modules themselves (timm.models.vision_transformer, timm.layers)
are timm's own code, unmodified.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types

MODULES = (
    "torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
    "torchvision.transforms.functional", "torchvision.transforms.v2", "torchvision.datasets", "torchvision.models",
    "torchvision.models.feature_extraction", "torchvision.utils", "torchvision.io",
)


class _Placeholder(type):
    """A class whose attributes are placeholder classes too (`InterpolationMode.BILINEAR`, subclassing)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def import_timm():
    """timm, importing it with the placeholders when torchvision is absent; None if timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    with _placeholders():
        import timm
        import timm.models.vision_transformer  # noqa: F401  (everything the tests use, imported now)
    return timm


def import_vit_pytorch():
    """vit_pytorch (its package __init__ imports torchvision-based models), with the placeholders when torchvision
    is absent; None if vit-pytorch is not installed."""
    if importlib.util.find_spec("vit_pytorch") is None:
        return None
    with _placeholders():
        import vit_pytorch
    return vit_pytorch


@contextlib.contextmanager
def _placeholders():
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield  # a real torchvision is there: no placeholders
        return
    for name in MODULES:
        module = _StubModule(name)
        module.__path__ = []  # a package, so submodule imports resolve to the entries above
        module.__version__ = "0.0.0+stub"
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        yield
    finally:
        # the library keeps the placeholders it imported; nothing else in the session may see a torchvision
        # (transformers probes for it with importlib.util.find_spec).
        for name in MODULES:
            sys.modules.pop(name, None)
