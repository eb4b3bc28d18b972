"""Writers of small ViT checkpoints in each format's own layout, for the conversion tests.

Each writer produces what the original tool would: Google's flat `.npz`
(Linen or pre-Linen names, optional `opt/target/` wrapper), Flax msgpack and
orbax directories, timm-named safetensors, Hugging Face `save_pretrained`
directories (from the real transformers model), and torchvision's layout.

torchvision cannot be imported here (its only wheel is a CUDA build), so
`TorchvisionViT` rebuilds torchvision's module tree (class_token, conv_proj,
encoder.layers.encoder_layer_{i} with a real nn.MultiheadAttention, heads)
from its public source layout; its state dict has torchvision's exact keys and
its forward computes torchvision's function.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from vit_jax import ViTConfig
from vit_jax.formats.mapping import flatten
from vit_jax.model import param_shapes


def random_flax_params(config: ViTConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Flat '/'-path params with every tensor random (a zero head would hide a wrong mapping)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in flatten(param_shapes(config.replace(scan=False))).items():
        values = rng.normal(0.0, 0.2, shape.shape)
        if key.endswith("/scale"):
            values += 1.0
        flat[key] = values.astype(dtype)
    return flat


PRE_LINEN = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
             "MlpBlock_0": "MlpBlock_3"}


def write_google_npz(path, flat: dict[str, np.ndarray], pre_linen: bool = False, wrapper: str = "",
                     extra: dict[str, np.ndarray] | None = None) -> None:
    """Google's layout: flat '/'-joined names; original-paper files number block modules 0,1,2,3."""
    out = {}
    for key, value in flat.items():
        if pre_linen:
            parts = key.split("/")
            parts = [PRE_LINEN.get(p, p) if i == 2 and parts[1].startswith("encoderblock_") else p
                     for i, p in enumerate(parts)]
            key = "/".join(parts)
        out[wrapper + key] = value
    out.update(extra or {})
    np.savez(path, **out)


def hf_config(config: ViTConfig, **overrides):
    from transformers import ViTConfig as HFViTConfig

    return HFViTConfig(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim, image_size=config.image_size, patch_size=config.patch_size,
        num_labels=config.num_classes, qkv_bias=config.qkv_bias, **overrides,
    )


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (HF and torch inits leave zero biases and unit norms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = p.ndim == 1 and name.endswith("weight")  # 1-D weights are LayerNorm scales
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if is_norm_scale else 0.0))
    return model.eval()


class _TorchvisionMLP(nn.Sequential):
    def __init__(self, hidden: int, mlp: int):
        super().__init__(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, hidden), nn.Dropout(0.0))


class _TorchvisionEncoderBlock(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(config.hidden_size, config.num_heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.mlp = _TorchvisionMLP(config.hidden_size, config.mlp_dim)

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class _TorchvisionEncoder(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, config.seq_len, config.hidden_size).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", _TorchvisionEncoderBlock(config)) for i in range(config.num_layers)))
        self.ln = nn.LayerNorm(config.hidden_size, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionViT(nn.Module):
    """torchvision.models.VisionTransformer's module tree and forward (NCHW input)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_hw[0]
        self.conv_proj = nn.Conv2d(config.num_channels, config.hidden_size, self.patch_size, self.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.encoder = _TorchvisionEncoder(config)
        heads = OrderedDict()
        if config.representation_size is not None:
            heads["pre_logits"] = nn.Linear(config.hidden_size, config.representation_size)
            heads["act"] = nn.Tanh()
        heads["head"] = nn.Linear(config.features_dim, config.num_classes)
        self.heads = nn.Sequential(heads)

    def forward(self, x):
        x = self.conv_proj(x)
        n, d = x.shape[:2]
        x = x.reshape(n, d, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def google_tree(config, seed=0):
    """A param tree written out by hand with Google's official Linen names."""
    rng = np.random.default_rng(seed)
    d, m, h, hd = config.hidden_size, config.mlp_dim, config.num_heads, config.head_dim
    ph, pw = config.patch_hw

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    def block():
        attn = {p: {"kernel": w(d, h, hd), "bias": w(h, hd)} for p in ("query", "key", "value")}
        attn["out"] = {"kernel": w(h, hd, d), "bias": w(d)}
        return {
            "LayerNorm_0": {"scale": 1 + w(d), "bias": w(d)},
            "MultiHeadDotProductAttention_0": attn,
            "LayerNorm_1": {"scale": 1 + w(d), "bias": w(d)},
            "MlpBlock_0": {"Dense_0": {"kernel": w(d, m), "bias": w(m)}, "Dense_1": {"kernel": w(m, d), "bias": w(d)}},
        }

    encoder = {f"encoderblock_{i}": block() for i in range(config.num_layers)}
    encoder["posembed_input"] = {"pos_embedding": w(1, config.seq_len, d)}
    encoder["encoder_norm"] = {"scale": 1 + w(d), "bias": w(d)}
    return {
        "embedding": {"kernel": w(ph, pw, config.num_channels, d), "bias": w(d)},
        "cls": w(1, 1, d),
        "Transformer": encoder,
        "head": {"kernel": w(d, config.num_classes), "bias": w(config.num_classes)},
    }
