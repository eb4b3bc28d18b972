"""timm for the tests, on a machine without a working torchvision: vit_torch_ref.interop's import_timm, the
documented way for user code too (its placeholders stand in for torchvision while timm loads)."""

from __future__ import annotations

from vit_torch_ref.interop import import_timm, import_vit_pytorch

__all__ = ["import_timm", "import_vit_pytorch"]
