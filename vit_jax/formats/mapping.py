"""The one table from Flax (Google vit_jax) parameter paths to timm-style torch keys.

Every conversion in the project (Flax <-> torch state dicts, the other formats,
the gradients compared by the parity harness) goes through `param_rules`. A
rule names one or more Flax leaves, one torch key and a layout transform; each
transform is a pure reshape/transpose/concat, so a round trip is bit-exact.

Flax trees here are per-block (`encoderblock_{i}`); scanned trees are unstacked
first (`vit_jax.unstack_block_params`). Framework-free: the shape of every leaf
follows from the config (`flax_shape`), so no model is traced to check a file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from vit_jax.config import ViTConfig
from vit_jax.params import to_layout, unstack_block_params


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


# One of q/k/v: kernel (D, heads, head_dim) <-> Linear weight (inner, D); bias (heads, head_dim) <-> (inner,).
HEADS_KERNEL = Transform(
    "heads_kernel",
    lambda xs: _contiguous(xs[0].reshape(xs[0].shape[0], -1).T),
    lambda t, c: [_contiguous(t.T.reshape(t.shape[1], c.num_heads, -1))],
)
HEADS_BIAS = Transform("heads_bias", lambda xs: xs[0].reshape(-1), lambda t, c: [t.reshape(c.num_heads, -1)])
# The MAP head's key and value kernels (D, heads, head_dim) <-> timm's fused kv weight (2D, D), k;v order.
KV_KERNEL = Transform(
    "kv_kernel",
    lambda xs: _contiguous(np.concatenate([x.reshape(x.shape[0], -1).T for x in xs], axis=0)),
    lambda t, c: [_contiguous(part.T.reshape(t.shape[1], c.num_heads, -1)) for part in np.split(t, 2, axis=0)],
)
KV_BIAS = Transform(
    "kv_bias",
    lambda xs: np.concatenate([x.reshape(-1) for x in xs]),
    lambda t, c: [part.reshape(c.num_heads, -1) for part in np.split(t, 2)],
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
    (("LayerScale_0/scale",), "ls1.gamma", IDENTITY, "layer_scale"),
    (("LayerScale_1/scale",), "ls2.gamma", IDENTITY, "layer_scale"),
]
# Tokens and norms around the blocks: (flax path, torch key, transform, the config fields that must all be
# set, or 'field=value', for the tensor to exist), in model order; _AFTER follows the blocks.
_BEFORE = [
    ("mask_token", "mask_token", IDENTITY, ("mask_token",)),
    ("cls", "cls_token", IDENTITY, ("has_class_token",)),
    ("dist", "dist_token", IDENTITY, ("distilled",)),
    ("registers", "reg_token", IDENTITY, ("num_register_tokens",)),
    ("Transformer/posembed_input/pos_embedding", "pos_embed", IDENTITY, ("posemb=learn",)),
    ("Transformer/pre_norm/scale", "norm_pre.weight", IDENTITY, ("pre_norm",)),
    ("Transformer/pre_norm/bias", "norm_pre.bias", IDENTITY, ("pre_norm",)),
]
_AFTER = [
    ("Transformer/encoder_norm/scale", "norm.weight", IDENTITY, ("final_norm",)),
    ("Transformer/encoder_norm/bias", "norm.bias", IDENTITY, ("final_norm",)),
    ("fc_norm/scale", "fc_norm.weight", IDENTITY, ("fc_norm",)),
    ("fc_norm/bias", "fc_norm.bias", IDENTITY, ("fc_norm",)),
    ("pre_logits/kernel", "pre_logits.fc.weight", LINEAR, ("representation_size",)),
    ("pre_logits/bias", "pre_logits.fc.bias", IDENTITY, ("representation_size",)),
    ("head/kernel", "head.weight", LINEAR, ("num_classes",)),
    ("head/bias", "head.bias", IDENTITY, ("num_classes", "head_bias")),
    ("head_dist/kernel", "head_dist.weight", LINEAR, ("num_classes", "distilled")),
    ("head_dist/bias", "head_dist.bias", IDENTITY, ("num_classes", "distilled", "head_bias")),
]


def _present(config: ViTConfig, needs: tuple[str, ...]) -> bool:
    def holds(need: str) -> bool:
        field, _, value = need.partition("=")
        return getattr(config, field) == value if value else getattr(config, field) not in (None, False, 0)

    return all(map(holds, needs))


def _rules(config: ViTConfig, table) -> list[Rule]:
    return [Rule((flax,), torch, t) for flax, torch, t, needs in table if _present(config, needs)]


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
    ]
    if config.patch_bias:
        rules.append(Rule(("embedding/bias",), "patch_embed.proj.bias", IDENTITY))
    if config.patch_norm:
        rules += [
            Rule((f"embedding_norm_{side}/{flax}",), f"patch_embed.norm_{side}.{torch}", IDENTITY)
            for side in ("in", "out") for flax, torch in (("scale", "weight"), ("bias", "bias"))
        ]
    rules += _rules(config, _BEFORE)
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
    return block_option_rules(config, rules + _rules(config, _AFTER))


# SwiGLU with separate gate and value layers (mlp_type 'swiglu'): (flax under MlpBlock_0/, torch under mlp., needs).
_SWIGLU = [("gate", "fc1_g", None), ("Dense_0", "fc1_x", None), ("norm", "norm", "mlp_norm")]
_MAP = "MAPHead_0/"
_MAP_ATTN = _MAP + "MultiHeadDotProductAttention_0/"
# The MAP head (big_vision's names <-> timm's attn_pool), placed before the head's rules.
_MAP_RULES = [
    ((_MAP + "probe",), "attn_pool.latent", IDENTITY),
    ((_MAP_ATTN + "query/kernel",), "attn_pool.q.weight", HEADS_KERNEL),
    ((_MAP_ATTN + "query/bias",), "attn_pool.q.bias", HEADS_BIAS),
    ((_MAP_ATTN + "key/kernel", _MAP_ATTN + "value/kernel"), "attn_pool.kv.weight", KV_KERNEL),
    ((_MAP_ATTN + "key/bias", _MAP_ATTN + "value/bias"), "attn_pool.kv.bias", KV_BIAS),
    ((_MAP_ATTN + "out/kernel",), "attn_pool.proj.weight", OUT_KERNEL),
    ((_MAP_ATTN + "out/bias",), "attn_pool.proj.bias", IDENTITY),
    ((_MAP + "LayerNorm_0/scale",), "attn_pool.norm.weight", IDENTITY),
    ((_MAP + "LayerNorm_0/bias",), "attn_pool.norm.bias", IDENTITY),
    ((_MAP + "MlpBlock_0/Dense_0/kernel",), "attn_pool.mlp.fc1.weight", LINEAR),
    ((_MAP + "MlpBlock_0/Dense_0/bias",), "attn_pool.mlp.fc1.bias", IDENTITY),
    ((_MAP + "MlpBlock_0/Dense_1/kernel",), "attn_pool.mlp.fc2.weight", LINEAR),
    ((_MAP + "MlpBlock_0/Dense_1/bias",), "attn_pool.mlp.fc2.bias", IDENTITY),
]


def _block_option_rule(config: ViTConfig, rule: Rule) -> list[Rule]:
    """One block rule under the MLP and attention-bias options (the packed SwiGLU keeps fc1's rules)."""
    block, _, key = rule.torch.partition(".")[2].partition(".")
    prefix = f"Transformer/encoderblock_{block}/"
    if key == "attn.qkv.bias" and not config.key_bias:  # q_bias and v_bias, no key bias
        return [Rule((prefix + f"{_ATTN}/{p}/bias",), f"blocks.{block}.attn.{p[0]}_bias", HEADS_BIAS)
                for p in ("query", "value")]
    if key.startswith("mlp.fc1.") and config.mlp_type == "swiglu":
        leaf = key.rpartition(".")[2]
        return [Rule((f"{prefix}MlpBlock_0/{flax}/{'kernel' if leaf == 'weight' else 'bias'}",),
                     f"blocks.{block}.mlp.{torch}.{leaf}", LINEAR if leaf == "weight" else IDENTITY)
                for flax, torch, needs in _SWIGLU if needs is None]
    if key == "mlp.fc2.weight" and config.mlp_norm:
        return [Rule((f"{prefix}MlpBlock_0/norm/{flax}",), f"blocks.{block}.mlp.norm.{torch}", IDENTITY)
                for flax, torch in (("scale", "weight"), ("bias", "bias"))] + [rule]
    return [rule]


def block_option_rules(config: ViTConfig, rules: list[Rule]) -> list[Rule]:
    """`rules` under the MAP head, the SwiGLU forms and q/v-only biases (vit_jax/options.py); rope has no parameters."""
    out: list[Rule] = []
    for rule in rules:
        if rule.torch.startswith("blocks."):
            out += _block_option_rule(config, rule)
            continue
        if rule.torch.startswith(("head.", "head_dist.")) and config.classifier == "map" and not any(
                r.torch.startswith("attn_pool.") for r in out):
            out += [Rule(flax, torch, t) for flax, torch, t in _MAP_RULES]
        out.append(rule)
    if config.classifier == "map" and not any(r.torch.startswith("attn_pool.") for r in out):
        out += [Rule(flax, torch, t) for flax, torch, t in _MAP_RULES]
    return out


def block_prefixes(index: int) -> tuple[str, str]:
    """(Flax path prefix, torch key prefix) of encoder block `index`."""
    return f"Transformer/encoderblock_{index}/", f"blocks.{index}."


def rules_by_group(config: ViTConfig) -> dict[int | None, list[Rule]]:
    """The rules of each encoder block (by index) and (None) of everything outside the blocks, in model order."""
    groups: dict[int | None, list[Rule]] = {None: [], **{i: [] for i in range(config.num_layers)}}
    for rule in param_rules(config):
        groups[int(rule.torch.split(".")[1]) if rule.torch.startswith("blocks.") else None].append(rule)
    return groups


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


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/c': leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def _stem_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the ResNet stem's leaves (vit_jax/resnet.py): bottleneck units, 4x wide out."""
    width = int(64 * config.width_factor)
    shapes = {"conv_root/kernel": (7, 7, config.num_channels, width), "gn_root/scale": (width,),
              "gn_root/bias": (width,)}
    channels = width
    for i, units in enumerate(config.resnet_layers or ()):
        features = width * 2**i
        for j in range(units):
            unit = f"block{i + 1}/unit{j + 1}/"
            convs = {"conv1": (1, 1, channels, features), "conv2": (3, 3, features, features),
                     "conv3": (1, 1, features, 4 * features)}
            if j == 0:
                convs["conv_proj"] = (1, 1, channels, 4 * features)
            for conv, shape in convs.items():
                norm = conv.replace("conv", "gn")
                shapes.update({f"{unit}{conv}/kernel": shape, f"{unit}{norm}/scale": shape[-1:],
                               f"{unit}{norm}/bias": shape[-1:]})
            channels = 4 * features
    return shapes


def _leaf_shape(path: str, config: ViTConfig) -> tuple[int, ...]:
    """The shape of the Flax leaf at `path` outside the stem (vit_jax/model.py's layers)."""
    c, d = config, config.hidden_size
    last = path.rsplit("/", 2)[-2:]
    if path == "embedding/kernel":
        return (*c.patch_hw, c.stem_width, d)
    if path == "embedding_norm_in/scale" or path == "embedding_norm_in/bias":
        return (c.patch_hw[0] * c.patch_hw[1] * c.num_channels,)
    if path in ("cls", "dist", "MAPHead_0/probe"):
        return (1, 1, d)
    if path == "registers":
        return (1, c.num_register_tokens, d)
    if path == "mask_token":
        return (1, d)
    if path.endswith("pos_embedding"):
        return (1, c.posemb_len, d)
    if last[0] in ("query", "key", "value"):
        return (d, c.num_heads, c.head_dim) if last[1] == "kernel" else (c.num_heads, c.head_dim)
    if last == ["out", "kernel"]:
        return (c.num_heads, c.head_dim, d)
    if last[0] in ("Dense_0", "gate"):  # a packed SwiGLU's Dense_0 holds gate and value side by side
        width = 2 * c.mlp_dim if c.mlp_type == "swiglu_packed" and path.startswith("Transformer/") else c.mlp_dim
        return (d, width) if last[1] == "kernel" else (width,)
    if path.endswith("MlpBlock_0/norm/scale") or path.endswith("MlpBlock_0/norm/bias"):
        return (c.mlp_dim,)  # the sub-LayerNorm (mlp_norm), inside the MLP
    if last[0] == "pre_logits":
        return (d, c.representation_size) if last[1] == "kernel" else (c.representation_size,)
    if last[0] in ("head", "head_dist"):
        return (c.features_dim, c.num_classes) if last[1] == "kernel" else (c.num_classes,)
    if last == ["Dense_1", "kernel"]:
        return (c.mlp_dim, d)
    return (d,)  # LayerNorm scales and biases, the embedding, out and Dense_1 biases


def expected_flax_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """'/'-path -> shape of every Flax parameter of `config` (per-block layout), in model order."""
    stem = _stem_shapes(config) if config.is_hybrid else {}
    return {path: stem[path] if path in stem else _leaf_shape(path, config)
            for rule in param_rules(config) for path in rule.flax}


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
    rules = param_rules(config)
    _check_keys(set(state_dict), {r.torch for r in rules}, "tensors", source)
    _check_shapes(state_dict, expected_torch_shapes(config), source)
    flat: dict[str, np.ndarray] = {}
    for rule in rules:
        for path, leaf in zip(rule.flax, rule.transform.to_flax(np.asarray(state_dict[rule.torch]), config)):
            flat[path] = leaf
    return to_layout(unflatten(flat), config)
