"""The hybrid ViT's ResNet stem in PyTorch, under timm's state-dict names.

Computes the function of `vit_jax/resnet.py` (Google's `models_resnet.py`) with
the numerics the config states (`stem_ws_form`, `stem_ws_eps`, `stem_gn_eps`).
Keys, below `patch_embed.backbone.`:

    stem.conv.weight, stem.norm.{weight,bias}         (conv, norm without `stem.` when there are no stages)
    stages.{i}.blocks.{j}.conv{1,2,3}.weight, norm{1,2,3}.{weight,bias}
    stages.{i}.blocks.0.downsample.conv.weight, downsample.norm.{weight,bias}
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vit_jax.config import STEM_GROUPS, ViTConfig


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Flax 'SAME' padding (before, after) of one spatial axis: the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


class StdConv2d(nn.Conv2d):
    """Bias-free 'SAME' convolution with its weight standardised per output channel over (in, h, w)."""

    def __init__(self, config: ViTConfig, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, bias=False)
        self.ws_form, self.ws_eps = config.stem_ws_form, config.stem_ws_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.pow(2).mean(dim=(1, 2, 3), keepdim=True)  # population variance, as jnp.var
        w = w / (var.sqrt() + self.ws_eps) if self.ws_form == "std" else w / (var + self.ws_eps).sqrt()
        return F.conv2d(_pad_same(x, self.kernel_size[0], self.stride[0]), w, stride=self.stride)


def _norm(config: ViTConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(STEM_GROUPS, channels, eps=config.stem_gn_eps)


class Downsample(nn.Module):
    def __init__(self, config: ViTConfig, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = StdConv2d(config, cin, cout, 1, stride)
        self.norm = _norm(config, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """1x1, 3x3 (carrying the stride), 1x1 to 4x features; a projection where the shape changes."""

    def __init__(self, config: ViTConfig, cin: int, features: int, stride: int):
        super().__init__()
        cout = 4 * features
        self.downsample = Downsample(config, cin, cout, stride) if cin != cout or stride != 1 else None
        self.conv1, self.norm1 = StdConv2d(config, cin, features, 1), _norm(config, features)
        self.conv2, self.norm2 = StdConv2d(config, features, features, 3, stride), _norm(config, features)
        self.conv3, self.norm3 = StdConv2d(config, features, cout, 1), _norm(config, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu(residual + self.norm3(self.conv3(y)))


class Stage(nn.Module):
    def __init__(self, config: ViTConfig, cin: int, features: int, units: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(
            *(Bottleneck(config, cin if j == 0 else 4 * features, features, stride if j == 0 else 1)
              for j in range(units))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Root(nn.Module):
    """7x7 stride-2 conv, GroupNorm, ReLU, 3x3 stride-2 max pool ('SAME', padded with -inf)."""

    def __init__(self, config: ViTConfig, width: int):
        super().__init__()
        self.conv = StdConv2d(config, config.num_channels, width, 7, 2)
        self.norm = _norm(config, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(_pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class ResNetStem(nn.Module):
    """Root then `config.resnet_layers` stages (timm's ResNetV2 without head). NCHW in and out."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        width = int(64 * config.width_factor)
        self.stem = Root(config, width)
        stages, cin = [], width
        for i, units in enumerate(config.resnet_layers):
            stages.append(Stage(config, cin, width * 2**i, units, 1 if i == 0 else 2))
            cin = 4 * width * 2**i
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def build_backbone(config: ViTConfig) -> nn.Module:
    """timm's layout: the root alone when there are no stages (R+ViT-Ti), else root + stages."""
    return Root(config, int(64 * config.width_factor)) if not config.resnet_layers else ResNetStem(config)


@torch.no_grad()
def reset_stem(backbone: nn.Module) -> None:
    """Google's init: lecun-normal convs, GroupNorm (1, 0), each unit's last norm scaled by zero."""
    for module in backbone.modules():
        if isinstance(module, StdConv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            nn.init.trunc_normal_(module.weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        elif isinstance(module, nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in backbone.modules():  # after the loop above, which visits a unit before its norms
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.norm3.weight)
