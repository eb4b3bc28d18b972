"""The ResNet stem of Google's hybrid ViTs (R50+ViT-B_16 and the AugReg hybrids).

Computes the function of Google's `models_resnet.py` under its parameter names,
so their `.npz` loads unchanged (all at the top level of the param tree):

    conv_root/kernel (7, 7, C, width), gn_root/{scale,bias}
    block{i}/unit{j}/conv{1,2,3}/kernel, gn{1,2,3}/{scale,bias}
    block{i}/unit1/conv_proj/kernel, gn_proj/{scale,bias}   where the shape changes

Convolutions have no bias and are weight-standardised over (h, w, in); GroupNorm
has 32 groups; every convolution and the max pool are 'SAME' padded. The config
states the standardisation form and the epsilons (`stem_ws_form`, `stem_ws_eps`,
`stem_gn_eps`): Google's by default, timm's to reproduce a timm hybrid exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.config import STEM_GROUPS, ViTConfig

Array = jax.Array


def weight_standardize(w: Array, form: str, eps: float) -> Array:
    """Per output channel of an HWIO kernel: 'std' (w - mean) / (std + eps), 'var' (w - mean) / sqrt(var + eps)."""
    axes = (0, 1, 2)
    w = w - jnp.mean(w, axis=axes, keepdims=True)
    if form == "std":
        return w / (jnp.std(w, axis=axes, keepdims=True) + eps)
    return w / jnp.sqrt(jnp.var(w, axis=axes, keepdims=True) + eps)


class StdConv(nn.Conv):
    """A bias-free 'SAME' convolution whose kernel is weight-standardised when read."""

    ws_form: str = "std"
    ws_eps: float = 1e-5

    def param(self, name: str, init_fn: Callable[..., Any], *init_args, **kwargs) -> Any:
        value = super().param(name, init_fn, *init_args, **kwargs)
        return weight_standardize(value, self.ws_form, self.ws_eps) if name == "kernel" else value


def _conv(c: ViTConfig, features: int, kernel: int, strides: int, name: str) -> nn.Module:
    return StdConv(
        features, (kernel, kernel), strides=(strides, strides), padding="SAME", use_bias=False,
        dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), ws_form=c.stem_ws_form,
        ws_eps=c.stem_ws_eps, name=name,
    )


def _norm(c: ViTConfig, name: str, zero_scale: bool = False) -> nn.Module:
    return nn.GroupNorm(
        num_groups=STEM_GROUPS, epsilon=c.stem_gn_eps, use_fast_variance=False,  # two-pass, as torch
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), name=name,
    )


class ResidualUnit(nn.Module):
    """Bottleneck unit: 1x1, 3x3 (carrying the stride), 1x1 to 4x features; projection where the shape changes."""

    config: ViTConfig
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        residual = x
        if x.shape[-1] != self.features * 4 or self.strides != 1:
            residual = _conv(c, self.features * 4, 1, self.strides, "conv_proj")(x)
            residual = _norm(c, "gn_proj")(residual)
        y = nn.relu(_norm(c, "gn1")(_conv(c, self.features, 1, 1, "conv1")(x)))
        y = nn.relu(_norm(c, "gn2")(_conv(c, self.features, 3, self.strides, "conv2")(y)))
        # The last norm starts at zero, so each unit starts as its projection (or the identity).
        y = _norm(c, "gn3", zero_scale=True)(_conv(c, self.features * 4, 1, 1, "conv3")(y))
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """`units` bottleneck units of `features` (x4 out); the first carries the stage's stride."""

    config: ViTConfig
    units: int
    features: int
    first_stride: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.units):
            stride = self.first_stride if j == 0 else 1
            x = ResidualUnit(self.config, self.features, stride, name=f"unit{j + 1}")(x)
        return x


def resnet_stem(c: ViTConfig, x: Array) -> Array:
    """Root conv, GroupNorm, ReLU, max pool, then `c.resnet_layers` stages; NHWC in and out.

    Called inside the VisionTransformer's compact `__call__`, so the layers are
    its own submodules and the params sit at the top level, as in Google's.
    """
    width = int(64 * c.width_factor)
    x = _conv(c, width, 7, 2, "conv_root")(x)
    x = nn.relu(_norm(c, "gn_root")(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
    for i, units in enumerate(c.resnet_layers):
        # The first stage keeps the pool's resolution; each later one halves it.
        x = ResNetStage(c, units, width * 2**i, 1 if i == 0 else 2, name=f"block{i + 1}")(x)
    return x


def open_unit_branches(params: dict[str, Any], scale: float) -> dict[str, Any]:
    """`params` with every unit's last GroupNorm scale (zero at init, which cuts the unit's branch off) at `scale`."""
    out = {}
    for name, value in params.items():
        if name == "gn3":
            value = {**value, "scale": jnp.full_like(value["scale"], scale)}
        elif isinstance(value, dict):
            value = open_unit_branches(value, scale)
        out[name] = value
    return out
