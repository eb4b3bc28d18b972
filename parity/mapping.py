"""The one table from Flax (Google vit_jax) parameter paths to timm-style torch keys.

Every conversion in the project (Flax <-> torch state dicts, the other formats,
the gradients compared by the parity harness) goes through `param_rules`. A
rule names one or more Flax leaves, one torch key and a layout transform; each
transform is a pure reshape/transpose/concat, so a round trip is bit-exact.

Flax trees here are per-block (`encoderblock_{i}`); scanned trees are unstacked
first (`vit_jax.unstack_block_params`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
from flax import traverse_util

from vit_jax.config import ViTConfig
from vit_jax.params import unstack_block_params


class MappingError(ValueError):
    """Tensors that do not fit the config: missing, unexpected or mis-shaped."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """Layout change between Flax leaves and one torch tensor."""

    name: str
    to_torch: Callable[[list[np.ndarray]], np.ndarray]
    to_flax: Callable[[np.ndarray, ViTConfig], list[np.ndarray]]


def _contiguous(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x)


IDENTITY = Transform("identity", lambda xs: xs[0], lambda t, c: [t])
# Dense kernel (in, out) <-> Linear weight (out, in).
LINEAR = Transform("linear", lambda xs: _contiguous(xs[0].T), lambda t, c: [_contiguous(t.T)])
# Conv kernel HWIO <-> OIHW.
CONV = Transform(
    "conv",
    lambda xs: _contiguous(xs[0].transpose(3, 2, 0, 1)),
    lambda t, c: [_contiguous(t.transpose(2, 3, 1, 0))],
)
# patch_norm: embedding kernel (ph, pw, C, D) <-> Linear weight (D, ph*pw*C) over (ph, pw, C)-flattened pixels.
PATCH_LINEAR = Transform(
    "patch_linear",
    lambda xs: _contiguous(xs[0].reshape(-1, xs[0].shape[-1]).T),
    lambda t, c: [_contiguous(t.T.reshape(*c.patch_hw, c.num_channels, c.hidden_size))],
)
# q, k, v kernels (D, heads, head_dim) <-> fused qkv weight (3 inner, D), q;k;v order (inner = heads x head_dim).
QKV_KERNEL = Transform(
    "qkv_kernel",
    lambda xs: _contiguous(np.concatenate([x.reshape(x.shape[0], -1).T for x in xs], axis=0)),
    lambda t, c: [
        _contiguous(part.T.reshape(c.hidden_size, c.num_heads, c.head_dim)) for part in np.split(t, 3, axis=0)
    ],
)
# q, k, v biases (heads, head_dim) <-> fused qkv bias (3 inner,).
QKV_BIAS = Transform(
    "qkv_bias",
    lambda xs: np.concatenate([x.reshape(-1) for x in xs]),
    lambda t, c: [part.reshape(c.num_heads, c.head_dim) for part in np.split(t, 3)],
)
# out kernel (heads, head_dim, D) <-> proj weight (D, inner).
OUT_KERNEL = Transform(
    "out_kernel",
    lambda xs: _contiguous(xs[0].reshape(-1, xs[0].shape[-1]).T),
    lambda t, c: [_contiguous(t.T.reshape(c.num_heads, c.head_dim, c.hidden_size))],
)


@dataclasses.dataclass(frozen=True)
class Rule:
    flax: tuple[str, ...]  # '/'-joined Flax paths (several for a fused torch tensor)
    torch: str
    transform: Transform


_ATTN = "MultiHeadDotProductAttention_0"
# (flax paths under Transformer/encoderblock_{i}/, torch key under blocks.{i}., transform, the config
# field the tensor needs: qkv_bias, attention_out_proj, or None for always)
_BLOCK = [
    (("LayerNorm_0/scale",), "norm1.weight", IDENTITY, None),
    (("LayerNorm_0/bias",), "norm1.bias", IDENTITY, None),
    (tuple(f"{_ATTN}/{p}/kernel" for p in ("query", "key", "value")), "attn.qkv.weight", QKV_KERNEL, None),
    (tuple(f"{_ATTN}/{p}/bias" for p in ("query", "key", "value")), "attn.qkv.bias", QKV_BIAS, "qkv_bias"),
    ((f"{_ATTN}/out/kernel",), "attn.proj.weight", OUT_KERNEL, "attention_out_proj"),
    ((f"{_ATTN}/out/bias",), "attn.proj.bias", IDENTITY, "attention_out_proj"),
    (("LayerNorm_1/scale",), "norm2.weight", IDENTITY, None),
    (("LayerNorm_1/bias",), "norm2.bias", IDENTITY, None),
    (("MlpBlock_0/Dense_0/kernel",), "mlp.fc1.weight", LINEAR, None),
    (("MlpBlock_0/Dense_0/bias",), "mlp.fc1.bias", IDENTITY, None),
    (("MlpBlock_0/Dense_1/kernel",), "mlp.fc2.weight", LINEAR, None),
    (("MlpBlock_0/Dense_1/bias",), "mlp.fc2.bias", IDENTITY, None),
]


# Hybrid ResNet stem: Google's names (top level) <-> timm's under patch_embed.backbone.
# Root: (flax path, torch key under the root's prefix, transform).
_ROOT = [
    ("conv_root/kernel", "conv.weight", CONV),
    ("gn_root/scale", "norm.weight", IDENTITY),
    ("gn_root/bias", "norm.bias", IDENTITY),
]
# Every unit: (flax path under block{i}/unit{j}/, torch key under stages.{i-1}.blocks.{j-1}., transform).
_UNIT = [
    (f"{flax}{r}/{leaf}", f"{torch}{r}.{key}", transform)
    for r in (1, 2, 3)
    for flax, torch, leaf, key, transform in (
        ("conv", "conv", "kernel", "weight", CONV),
        ("gn", "norm", "scale", "weight", IDENTITY),
        ("gn", "norm", "bias", "bias", IDENTITY),
    )
]
# A stage's first unit also projects the residual (its width or stride changes).
_PROJECTION = [
    ("conv_proj/kernel", "downsample.conv.weight", CONV),
    ("gn_proj/scale", "downsample.norm.weight", IDENTITY),
    ("gn_proj/bias", "downsample.norm.bias", IDENTITY),
]


def stem_rules(config: ViTConfig) -> list[Rule]:
    """The ResNet stem's parameters (none for a plain ViT); timm drops `stem.` when there are no stages."""
    if not config.is_hybrid:
        return []
    backbone = "patch_embed.backbone."
    root = backbone + ("stem." if config.resnet_layers else "")
    rules = [Rule((flax,), root + torch, t) for flax, torch, t in _ROOT]
    for i, units in enumerate(config.resnet_layers):
        for j in range(units):
            unit = _UNIT + (_PROJECTION if j == 0 else [])
            rules += [
                Rule((f"block{i + 1}/unit{j + 1}/{flax}",), f"{backbone}stages.{i}.blocks.{j}.{torch}", t)
                for flax, torch, t in unit
            ]
    return rules


def param_rules(config: ViTConfig) -> list[Rule]:
    """Every parameter of `config`, as Flax path(s) <-> torch key, in model order."""
    rules = stem_rules(config) + [
        Rule(("embedding/kernel",), "patch_embed.proj.weight", PATCH_LINEAR if config.patch_norm else CONV),
        Rule(("embedding/bias",), "patch_embed.proj.bias", IDENTITY),
    ]
    if config.patch_norm:
        rules += [
            Rule((f"embedding_norm_{side}/{flax}",), f"patch_embed.norm_{side}.{torch}", IDENTITY)
            for side in ("in", "out") for flax, torch in (("scale", "weight"), ("bias", "bias"))
        ]
    if config.has_class_token:
        rules.append(Rule(("cls",), "cls_token", IDENTITY))
    if config.posemb == "learn":
        rules.append(Rule(("Transformer/posembed_input/pos_embedding",), "pos_embed", IDENTITY))
    for i in range(config.num_layers):
        for flax_paths, torch_key, transform, needs in _BLOCK:
            if needs is not None and not getattr(config, needs):
                continue
            rules.append(
                Rule(
                    tuple(f"Transformer/encoderblock_{i}/{p}" for p in flax_paths),
                    f"blocks.{i}.{torch_key}",
                    transform,
                )
            )
    rules += [
        Rule(("Transformer/encoder_norm/scale",), "norm.weight", IDENTITY),
        Rule(("Transformer/encoder_norm/bias",), "norm.bias", IDENTITY),
    ]
    if config.representation_size is not None:
        rules += [
            Rule(("pre_logits/kernel",), "pre_logits.fc.weight", LINEAR),
            Rule(("pre_logits/bias",), "pre_logits.fc.bias", IDENTITY),
        ]
    if config.num_classes:
        rules += [
            Rule(("head/kernel",), "head.weight", LINEAR),
            Rule(("head/bias",), "head.bias", IDENTITY),
        ]
    return rules


def block_prefixes(index: int) -> tuple[str, str]:
    """(Flax path prefix, torch key prefix) of encoder block `index`."""
    return f"Transformer/encoderblock_{index}/", f"blocks.{index}."


def group_rules(config: ViTConfig, block: int | None) -> list[Rule]:
    """The rules of one encoder block, or (block None) of everything outside the blocks, in model order."""
    rules = param_rules(config)
    if block is None:
        return [r for r in rules if not r.torch.startswith("blocks.")]
    prefix = block_prefixes(block)[1]
    return [r for r in rules if r.torch.startswith(prefix)]


def rules_to_torch(flat: Mapping[str, Any], rules: list[Rule], strip: str = "") -> dict[str, np.ndarray]:
    """{'/'-path: leaf} (a group's Flax tensors) -> {torch key without `strip`: tensor} by `rules`."""
    return {r.torch[len(strip):]: r.transform.to_torch([np.asarray(flat[p]) for p in r.flax]) for r in rules}


def rules_to_flax(
    tensors: Mapping[str, Any], rules: list[Rule], config: ViTConfig, strip: str = ""
) -> dict[str, np.ndarray]:
    """{torch key without `strip`: tensor} -> {'/'-path: leaf} by `rules` (the inverse of rules_to_torch)."""
    flat = {}
    for rule in rules:
        flat.update(zip(rule.flax, rule.transform.to_flax(np.asarray(tensors[rule.torch[len(strip):]]), config)))
    return flat


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(dict(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def expected_flax_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """'/'-path -> shape of every Flax parameter of `config` (per-block layout)."""
    from vit_jax.model import param_shapes  # model import is heavier; only needed here

    shapes = param_shapes(config.replace(scan=False, remat=False))
    return {k: tuple(v.shape) for k, v in flatten(shapes).items()}


def expected_torch_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    flax_shapes = expected_flax_shapes(config)
    dummies = {k: np.zeros(s, np.float32) for k, s in flax_shapes.items()}
    return {r.torch: r.transform.to_torch([dummies[p] for p in r.flax]).shape for r in param_rules(config)}


def _check_keys(found: set[str], expected: set[str], what: str, source: str) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {what} {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {what} {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        raise MappingError(f"{source}: {'; '.join(parts)} for this config")


def _check_shapes(tensors: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], source: str) -> None:
    for key, shape in expected.items():
        if tuple(np.shape(tensors[key])) != shape:
            raise MappingError(
                f"{source}: tensor {key!r} has shape {tuple(np.shape(tensors[key]))}, expected {shape} for this config"
            )


def flax_to_torch(params: Mapping[str, Any], config: ViTConfig, source: str = "flax params") -> dict[str, np.ndarray]:
    """Flax param tree (nested, per-block or scanned) -> timm-named state dict of NumPy arrays."""
    flat = {k: np.asarray(v) for k, v in flatten(unstack_block_params(dict(params))).items()}
    expected = expected_flax_shapes(config)
    _check_keys(set(flat), set(expected), "parameters", source)
    _check_shapes(flat, expected, source)
    return {r.torch: r.transform.to_torch([flat[p] for p in r.flax]) for r in param_rules(config)}


def torch_to_flax(state_dict: Mapping[str, Any], config: ViTConfig, source: str = "state dict") -> dict[str, Any]:
    """timm-named state dict (NumPy arrays) -> nested Flax param tree in `config`'s layout."""
    from vit_jax.params import to_layout

    rules = param_rules(config)
    _check_keys(set(state_dict), {r.torch for r in rules}, "tensors", source)
    _check_shapes(state_dict, expected_torch_shapes(config), source)
    flat: dict[str, np.ndarray] = {}
    for rule in rules:
        for path, leaf in zip(rule.flax, rule.transform.to_flax(np.asarray(state_dict[rule.torch]), config)):
            flat[path] = leaf
    return to_layout(unflatten(flat), config)
