"""A plain PyTorch twin of `vit_jax.VisionTransformer` with timm's state-dict names."""

from vit_jax.config import ViTConfig, get_config
from vit_torch_ref.model import VisionTransformer, torch_dtype
from vit_torch_ref.pretrained import load_pretrained

__all__ = ["ViTConfig", "VisionTransformer", "get_config", "load_pretrained", "torch_dtype"]
