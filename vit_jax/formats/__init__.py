"""Checkpoint formats, each read lazily into a TensorSource and written from Flax- or timm-named tensors."""

from vit_jax.formats import big_vision, flax_ckpt, google_npz, hf, timm_hub, torch_sd, torchvision, vit_pytorch
from vit_jax.formats.base import FLAX, TIMM, ConversionError, TensorSource, config_sidecar

# name -> (module, naming its writer takes)
FORMATS = {
    google_npz.FORMAT: (google_npz, FLAX),
    flax_ckpt.FORMAT: (flax_ckpt, FLAX),
    torch_sd.FORMAT: (torch_sd, TIMM),
    timm_hub.FORMAT: (timm_hub, TIMM),
    hf.FORMAT: (hf, TIMM),
    torchvision.FORMAT: (torchvision, TIMM),
    vit_pytorch.FORMAT: (vit_pytorch, TIMM),
    big_vision.FORMAT: (big_vision, FLAX),
}

__all__ = ["FLAX", "FORMATS", "TIMM", "ConversionError", "TensorSource", "config_sidecar"]
