"""timm and vit-pytorch on a CPU-only machine that reaches only PyPI: `import_timm()`, `import_vit_pytorch()`.

Both import torchvision at load time, for data transforms, datasets, FX feature extraction and a few layers that a
Vision Transformer never touches. PyPI's torchvision for torch 2.13 on x86_64 Linux is a CUDA build: beside the
CPU torch it fails to import (`operator torchvision::nms does not exist`), and without it timm does not import.
So install both without their dependencies and import them through here:

    pip install --no-deps timm==1.0.31 vit-pytorch==1.26.14

    from vit_torch_ref.interop import import_timm
    timm = import_timm()
    model = timm.create_model("vit_base_patch16_224", pretrained=False)

When a working torchvision is importable it is used and nothing is replaced. Otherwise every torchvision name
these packages import resolves to an inert placeholder class while they load, and the placeholders are removed
again afterwards (transformers probes for torchvision with importlib.util.find_spec). The models themselves are
the packages' own, unmodified code; what needs the real torchvision (timm.data.create_transform, torchvision's
datasets) does not work: `vit_jax.load_transform` gives a checkpoint's preprocessing without it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

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


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


def torchvision_works() -> bool:
    """Whether a real torchvision imports here (the CUDA wheel beside a CPU torch does not)."""
    if "torchvision" in sys.modules:
        return not isinstance(sys.modules["torchvision"], _PlaceholderModule)
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001  (any failure: RuntimeError from its operator registrations, OSError, ...)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package must not be found again
        return False
    return True


@contextlib.contextmanager
def placeholder_torchvision() -> Iterator[None]:
    """Placeholder torchvision modules while the block runs (unless a real torchvision works)."""
    if torchvision_works():
        yield
        return
    for name in MODULES:
        module = _PlaceholderModule(name)
        module.__path__ = []  # a package, so submodule imports resolve to the entries above
        module.__version__ = "0.0.0+placeholder"
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
    try:
        yield
    finally:
        for name in MODULES:
            sys.modules.pop(name, None)


def import_timm() -> types.ModuleType | None:
    """timm with its ViT models loaded, placeholders standing in for a missing torchvision; None if not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    with placeholder_torchvision():
        import timm
        import timm.models.eva  # noqa: F401  (the ViT families, imported while the placeholders are there)
        import timm.models.vision_transformer  # noqa: F401
    return timm


def import_vit_pytorch() -> types.ModuleType | None:
    """The vit_pytorch package (its torchvision-based models too, as placeholders); None if not installed."""
    if importlib.util.find_spec("vit_pytorch") is None:
        return None
    with placeholder_torchvision():
        import vit_pytorch
    return vit_pytorch
