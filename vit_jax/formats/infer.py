"""The architecture of a checkpoint, read from its tensor shapes, merged with what configs state.

Visible in the tensors: patch size, channels, hidden size, MLP width, depth,
class token (token vs gap pooling), learned vs fixed position embeddings, the
grid (hence image size, when square), qkv bias, representation size, number of
classes, the patch-embedding norms, the q/k/v width and an output projection,
and in Flax naming the number of heads. Not visible: the heads in a fused-qkv
(PyTorch) naming, how a normed patch embedding's ph*pw*C pixels split, and numerics (GELU form, LayerNorm epsilon, input
normalisation). Those come, in rising priority, from the format's own
conventions, what the checkpoint states (a config JSON beside it, an HF
config.json, safetensors metadata), then the user's config.
"""

from __future__ import annotations

import math
import re
from typing import Any

from vit_jax.config import ARCHITECTURE_FIELDS, PRESETS, ConfigError, ViTConfig
from vit_jax.formats.base import FLAX, ConversionError, TensorSource
from vit_jax.formats.infer_options import infer_class_slots, infer_options
from vit_jax.options import tensor_options

# Where each fact shows, per naming: (key, function of the shape).
_PROBES = {
    FLAX: {
        "patch": ("embedding/kernel", lambda s: {"patch": s[:2], "num_channels": s[2], "hidden_size": s[3]}),
        "mlp": ("Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel", lambda s: {"mlp_dim": s[0]}),
        "heads": ("Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
                  lambda s: {"num_heads": s[1], "inner_dim": s[1] * s[2]}),
        "out_proj": "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel",
        "patch_norm": "embedding_norm_in/scale",
        "qkv_bias": "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/bias",
        "cls": "cls",
        "posemb": "Transformer/posembed_input/pos_embedding",
        "pre_logits": ("pre_logits/kernel", lambda s: {"representation_size": s[1]}),
        "head": ("head/kernel", lambda s: {"num_classes": s[1]}),
        "block": re.compile(r"^Transformer/encoderblock_(\d+)/"),
    },
    "timm": {
        "patch": ("patch_embed.proj.weight", lambda s: {"patch": s[2:], "num_channels": s[1], "hidden_size": s[0]}),
        "mlp": ("blocks.0.mlp.fc2.weight", lambda s: {"mlp_dim": s[1]}),  # the width fc2 reads (SwiGLU's gated)
        "heads": None,  # fused qkv: the split into heads is not stored
        "inner": ("blocks.0.attn.qkv.weight", lambda s: {"inner_dim": s[0] // 3}),
        "out_proj": "blocks.0.attn.proj.weight",
        "patch_norm": "patch_embed.norm_in.weight",
        # with patch_norm, a Linear over (ph, pw, C) pixels: how they split is not stored
        "patch_linear": ("patch_embed.proj.weight", lambda s: {"hidden_size": s[0], "patch_pixels": s[1]}),
        "qkv_bias": "blocks.0.attn.qkv.bias",
        "cls": "cls_token",
        "posemb": "pos_embed",
        "pre_logits": ("pre_logits.fc.weight", lambda s: {"representation_size": s[0]}),
        "head": ("head.weight", lambda s: {"num_classes": s[0]}),
        "block": re.compile(r"^blocks\.(\d+)\."),
    },
}
# The hybrid's ResNet stem, per naming: (root conv, its in/out channels from the shape, stage-unit key pattern).
_STEM_PROBES = {
    FLAX: (("conv_root/kernel",), lambda s: (s[2], s[3]), re.compile(r"^block(\d+)/unit(\d+)/")),
    "timm": (
        ("patch_embed.backbone.stem.conv.weight", "patch_embed.backbone.conv.weight"),
        lambda s: (s[1], s[0]),
        re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\."),
    ),
}
# The fields the tensors fix: a config that disagrees contradicts the checkpoint.
ARCHITECTURE = ARCHITECTURE_FIELDS
# Of those, a preset's defaults that are not a claim about the checkpoint (a B/16 preset says 224 px, 1000 classes).
_PRESET_DEFAULTS = ("image_size", "num_classes", "representation_size", "classifier", "qkv_bias", "posemb",
                    "patch_norm", "attention_head_dim", "attention_out_proj") + tensor_options()
# Standard ViT widths (hidden size -> heads) for fused-qkv files with no config (docs/design.md, "Presets").
STANDARD_HEADS = {c.hidden_size: c.num_heads for name, c in PRESETS.items() if name != "ViT-testing"}


def _pair(shape) -> int | tuple[int, int]:
    return int(shape[0]) if shape[0] == shape[1] else (int(shape[0]), int(shape[1]))


def _infer_stem(source: TensorSource, fields: dict[str, Any], evidence: dict[str, str]) -> None:
    """resnet_layers (units per stage, counted from the unit tensors), width_factor and the image's channels."""
    naming = FLAX if source.naming == FLAX else "timm"
    roots, channels, unit = _STEM_PROBES[naming]
    root = next((k for k in roots if k in source.shapes), None)
    if root is None:
        fields["resnet_layers"], evidence["resnet_layers"] = None, f"no {source.file_name(roots[0])!r} (not a hybrid)"
        return
    cin, width = channels(source.shapes[root])
    fields["num_channels"], evidence["num_channels"] = cin, source.file_name(root)
    fields["width_factor"], evidence["width_factor"] = width / 64, source.file_name(root)
    offset = 1 if naming == FLAX else 0  # Google counts block1/unit1, timm stages.0.blocks.0
    last: dict[int, tuple[int, str]] = {}
    for key in source.shapes:
        if m := unit.match(key):
            stage, index = int(m.group(1)) - offset, int(m.group(2)) - offset
            if index >= last.get(stage, (-1, ""))[0]:
                last[stage] = (index, key)
    stages = sorted(last)
    if stages != list(range(len(stages))):
        missing = next(i for i in range(len(stages)) if i not in last)
        name = f"block{missing + 1}/unit1" if naming == FLAX else f"patch_embed.backbone.stages.{missing}.blocks.0"
        raise ConversionError(f"{source.path}: the ResNet stem has no tensors {name}/... but has later stages "
                              f"{[i + offset for i in stages]}; expected consecutive stages")
    fields["resnet_layers"] = tuple(last[i][0] + 1 for i in stages)
    evidence["resnet_layers"] = ", ".join(source.file_name(last[i][1]) for i in stages) + " (last unit of each stage)"
    if not stages:
        evidence["resnet_layers"] = f"{source.file_name(root)} and no stage tensors (root only)"


def infer_architecture(source: TensorSource) -> tuple[dict[str, Any], dict[str, str], bool, int | None]:
    """(fields the tensors show, field -> the tensor that shows it, has a class token, posemb length or None)."""
    probes = _PROBES[FLAX if source.naming == FLAX else "timm"]
    shapes = source.shapes
    fields: dict[str, Any] = {}
    evidence: dict[str, str] = {}

    def probe(name: str, required: bool) -> None:
        key, read = probes[name]
        if key not in shapes:
            if required:
                raise ConversionError(f"{source.path}: missing tensor {key!r} ({name}); expected a ViT checkpoint in "
                                      f"{source.format} layout")
            return
        try:
            found = read(shapes[key])
        except IndexError:
            raise ConversionError(f"{source.path}: tensor {source.file_name(key)!r} has shape {shapes[key]}, "
                                  f"which is not a ViT {name} shape") from None
        for field, value in found.items():
            fields[field], evidence[field] = value, source.file_name(key)

    def present(name: str, field: str) -> bool:
        key = probes[name]
        fields[field] = key in shapes
        evidence[field] = f"{source.file_name(key)} ({'present' if fields[field] else 'absent'})"
        return fields[field]

    if present("patch_norm", "patch_norm") and source.naming != FLAX:
        probe("patch_linear", required=True)  # patch_size and num_channels: build_config splits the pixels
    else:
        probe("patch", required=True)
        fields["patch_size"] = _pair(fields.pop("patch"))
        evidence["patch_size"] = evidence.pop("patch")
    _infer_stem(source, fields, evidence)
    blocks = {int(m.group(1)): k for k in shapes if (m := probes["block"].match(k))}
    if not blocks:
        raise ConversionError(f"{source.path}: no transformer blocks found (tensors named like "
                              f"{probes['block'].pattern!r}); expected a ViT checkpoint in {source.format} layout")
    fields["num_layers"] = max(blocks) + 1
    evidence["num_layers"] = f"{source.file_name(blocks[max(blocks)])} (last block)"
    probe("mlp", required=True)
    probe("heads" if probes["heads"] is not None else "inner", required=True)
    present("out_proj", "attention_out_proj")
    fields["qkv_bias"], evidence["qkv_bias"] = probes["qkv_bias"] in shapes, source.file_name(probes["qkv_bias"])
    has_cls = probes["cls"] in shapes
    evidence["classifier"] = f"{source.file_name(probes['cls'])} ({'present' if has_cls else 'absent'})"
    fields["posemb"] = "learn" if probes["posemb"] in shapes else "sincos2d"
    presence = "present" if fields["posemb"] == "learn" else "absent"
    evidence["posemb"] = f"{source.file_name(probes['posemb'])} ({presence})"
    tokens = None
    if fields["posemb"] == "learn":
        seq = shapes[probes["posemb"]]
        if len(seq) != 3:
            raise ConversionError(f"{source.path}: tensor {source.file_name(probes['posemb'])!r} has shape {seq}, "
                                  f"expected (1, tokens, {fields['hidden_size']})")
        tokens = seq[1]
        evidence["image_size"] = f"{source.file_name(probes['posemb'])} {tuple(seq)}"
    fields["representation_size"], evidence["representation_size"] = None, "no pre-logits tensor"
    probe("pre_logits", required=False)
    fields["num_classes"], evidence["num_classes"] = 0, "no head tensor"
    probe("head", required=False)
    infer_options(source, fields, evidence)
    return fields, evidence, has_cls, tokens


def _grid_image_size(patch_size, tokens: int, slots: int, wanted, path: str, evidence: str, stem: dict,
                     fallback=None):
    """Image size from the position-embedding length (square grid, or the grid `wanted` implies).

    `slots`: the class (and distillation) tokens' positions; `stem`: the hybrid fields (the ResNet stem's
    stride multiplies the patch size). `fallback` (the requested --image-size) is taken only for a grid that
    cannot be square, where it is the one guess left.
    """
    patches = tokens - slots
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    stride = ViTConfig(patch_size=patch_size, image_size=(1024 * ph, 1024 * pw), num_heads=1, **stem).stem_stride
    ph, pw = ph * stride, pw * stride
    if wanted is not None:
        try:
            trial = ViTConfig(image_size=wanted, patch_size=patch_size, num_heads=1, **stem)
        except ConfigError:
            trial = None  # not a size for this patch; the tensors decide, and the claim is checked later
        if trial is not None and trial.num_patches == patches:
            return wanted
    side = math.isqrt(max(patches, 0))
    if (side * side != patches or patches == 0) and fallback is not None and fallback != wanted:
        return _grid_image_size(patch_size, tokens, slots, fallback, path, evidence, stem)
    if side * side != patches or patches == 0:
        raise ConversionError(f"{path}: {evidence} holds {patches} patch positions, not a square grid; state the "
                              f"source's image size: --set image_size=[H,W] (or --image-size HxW to convert at that "
                              f"size, or --config x.json)")
    return side * ph if ph == pw else (side * ph, side * pw)


def build_config(
    source: TensorSource,
    config: ViTConfig | None = None,
    config_is_preset: bool = False,
    overrides: dict[str, Any] | None = None,
    image_size_hint: int | tuple[int, int] | None = None,
) -> ViTConfig:
    """The ViTConfig of `source`: inferred architecture + the format's, the file's and the user's other fields.

    `config` from the user: a preset (`config_is_preset`) only fills what the
    tensors do not show (heads) and must agree on the width/depth it names; a
    full config (a JSON file, a ViTConfig object) also sets numerics and
    runtime fields. `overrides` (`convert --set`) are fields the user states
    outright, above the config. Any stated value that contradicts a tensor is an error.
    `image_size_hint` (the target --image-size) settles a non-square grid nothing else states.
    """
    fields, evidence, has_cls, tokens = infer_architecture(source)
    claims, image_hint = _claims(source, config, config_is_preset, overrides)
    stated: dict[str, Any] = {}
    for _, claim in claims:
        stated.update(claim)

    slots = infer_class_slots(fields, evidence, has_cls, tokens, stated)
    _settle_classifier(fields, evidence, has_cls, stated.get("classifier"))
    if "patch_pixels" in fields:
        _split_patch_pixels(fields, evidence, stated, source)
    _settle_heads(fields, evidence, stated, source)
    _settle_image_size(fields, evidence, tokens, slots, stated.get("image_size", image_hint), source,
                       image_size_hint)
    _check_claims(claims, fields, evidence, source.path)
    return _assemble(fields, claims, source, config.name if config_is_preset else None)


def _claims(source: TensorSource, config: ViTConfig | None, config_is_preset: bool,
            overrides: dict[str, Any] | None) -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    """(who, the fields they state) in rising priority: the checkpoint, the user's config, --set; and the
    image size a full user config names, which only settles what the tensors leave open."""
    claims: list[tuple[str, dict[str, Any]]] = []
    image_hint = None
    if source.stated:
        claims.append(("the checkpoint's own config", dict(source.stated)))
    if config is not None:
        user = config.to_dict()
        if config_is_preset:
            user = {k: v for k, v in user.items() if k in ARCHITECTURE and k not in _PRESET_DEFAULTS}
        else:
            # A user's config may target another resolution or class count (a fine-tuning config):
            # those come from the tensors (and --image-size / --num-classes). Its image size only
            # settles what the tensors leave open (a non-square grid, a fixed sin-cos embedding).
            image_hint = user["image_size"]
            user = {k: v for k, v in user.items() if k not in ("image_size", "num_classes")}
        claims.append((f"config {config.name!r}", user))
    if overrides:
        claims.append(("--set", dict(overrides)))
    return claims, image_hint


def _settle_classifier(fields: dict[str, Any], evidence: dict[str, str], has_cls: bool, classifier) -> None:
    """The pooling: a class token means one of the token poolings, none means gap or unpooled; a stated
    classifier picks among those, and a MAP probe overrides both."""
    if has_cls:
        fields["classifier"] = classifier if classifier in ("token", "token_unpooled", "token_gap") else "token"
    else:
        fields["classifier"] = classifier if classifier in ("gap", "unpooled") else "gap"
    if fields.pop("map_head"):  # a MAP probe pools
        fields["classifier"], evidence["classifier"] = "map", evidence.pop("map_head")
    evidence.pop("map_head", None)


def _settle_heads(fields: dict[str, Any], evidence: dict[str, str], stated: dict[str, Any],
                  source: TensorSource) -> None:
    """num_heads (stored, stated, or assumed from a standard width) and attention_head_dim from the q/k/v width."""
    inner = fields.pop("inner_dim")
    if "num_heads" not in fields:
        if "num_heads" in stated:
            fields["num_heads"] = stated["num_heads"]
        elif source.default_head_dim and inner % source.default_head_dim == 0:
            fields["num_heads"] = inner // source.default_head_dim
            source.notes.append(f"num_heads={fields['num_heads']} assumed from q/k/v width {inner} and the "
                                f"{source.format} default head width {source.default_head_dim}; pass --set "
                                f"num_heads=N if the model was built with other heads")
        elif inner == fields["hidden_size"] and fields["hidden_size"] in STANDARD_HEADS:
            fields["num_heads"] = STANDARD_HEADS[fields["hidden_size"]]
            source.notes.append(f"num_heads={fields['num_heads']} assumed from the standard ViT of hidden size "
                                f"{fields['hidden_size']}; pass --config to override")
        else:
            raise ConversionError(
                f"{source.path}: the number of attention heads is not stored in {source.format} naming and "
                f"{'hidden size' if inner == fields['hidden_size'] else 'q/k/v width'} {inner} is not a standard ViT "
                f"width; pass --set num_heads=N or --config (a preset such as 'B/16' or a config JSON)"
            )
        evidence["num_heads"] = "the config"
    heads = fields["num_heads"]
    if not isinstance(heads, int) or heads <= 0 or inner % heads:
        raise ConversionError(f"{source.path}: num_heads={heads!r} does not divide the q/k/v width {inner}; "
                              f"expected a divisor of {inner}")
    # None is the default hidden_size // num_heads; a vit-pytorch dim_head that differs is stated.
    fields["attention_head_dim"] = None if inner == fields["hidden_size"] else inner // heads
    evidence["attention_head_dim"] = f"the q/k/v width {inner}"


def _settle_image_size(fields: dict[str, Any], evidence: dict[str, str], tokens: int | None, slots: int, wanted,
                       source: TensorSource, image_size_hint) -> None:
    """The image size from the position grid (what is `wanted` where the grid allows it), else as stated."""
    if tokens is not None:
        stem = {k: fields[k] for k in ("resnet_layers", "width_factor") if k in fields}
        fields["image_size"] = _grid_image_size(fields["patch_size"], tokens, slots, wanted, source.path,
                                                evidence["image_size"], stem, image_size_hint)
    elif wanted is not None:
        fields["image_size"], evidence["image_size"] = wanted, "the config"
    else:
        raise ConversionError(f"{source.path}: no position embedding to infer the image size from (fixed sin-cos "
                              f"embedding); pass a config with the image size (--config x.json)")


def _check_claims(claims: list[tuple[str, dict[str, Any]]], fields: dict[str, Any], evidence: dict[str, str],
                  path: str) -> None:
    """Every stated architecture field agrees with what the tensors show (fields taken from a config pass)."""
    for who, claim in claims:
        for field, value in claim.items():
            if field not in fields or evidence[field] == "the config":
                continue
            if field == "attention_head_dim":  # None and hidden // heads say the same
                value = value or fields["hidden_size"] // fields["num_heads"]
                if value == (fields[field] or fields["hidden_size"] // fields["num_heads"]):
                    continue
            if _normal(value) != _normal(fields[field]):
                raise ConversionError(
                    f"{path}: {who} says {field}={value!r}, but tensor {evidence[field]} implies "
                    f"{field}={fields[field]!r}"
                )


def _assemble(fields: dict[str, Any], claims: list[tuple[str, dict[str, Any]]], source: TensorSource,
              preset_name: str | None) -> ViTConfig:
    """Defaults < the format's numerics < the claims' non-architecture fields < the settled architecture."""
    # A format's stem numerics (timm's standardisation and GroupNorm eps) apply to hybrids only.
    numerics = {k: v for k,
                v in source.numerics.items() if fields["resnet_layers"] is not None or not k.startswith("stem_")}
    merged = {**ViTConfig().to_dict(), **numerics}
    for _, claim in claims:
        merged.update({k: v for k, v in claim.items() if k not in ARCHITECTURE})
    merged.update(fields)
    for field in ("pixel_mean", "pixel_std"):  # a format's one-value-per-channel default, for any channel count
        if len(merged[field]) != merged["num_channels"] and len(set(merged[field])) == 1:
            merged[field] = (merged[field][0],) * merged["num_channels"]
    if preset_name is not None:
        merged["name"] = preset_name
    try:
        return ViTConfig.from_dict(merged)
    except ConfigError as e:
        raise ConversionError(f"{source.path}: the inferred architecture is not a valid ViT config: {e}") from None


def _split_patch_pixels(fields: dict[str, Any], evidence: dict[str, str], stated: dict[str, Any],
                        source: TensorSource) -> None:
    """patch_size and num_channels from a patch_norm projection's width ph*pw*C and what the user states."""
    pixels, where = fields.pop("patch_pixels"), evidence.pop("patch_pixels")
    channels = stated.get("num_channels")
    patch = stated.get("patch_size")
    if patch is None:
        candidates = [channels] if channels else [3, 1]  # RGB, then grey: p*p*3 is never a square
        for c in candidates:
            side = math.isqrt(pixels // c) if isinstance(c, int) and c > 0 and pixels % c == 0 else 0
            if side and side * side * c == pixels:
                patch, channels = side, c
                break
        else:
            raise ConversionError(f"{source.path}: {where} takes {pixels} pixels per patch, which is not a square "
                                  f"patch of {' or '.join(map(str, candidates))} channel(s); pass --set "
                                  f"patch_size=P (or [PH,PW]) --set num_channels=C")
        if "num_channels" not in stated:
            source.notes.append(f"patch_size={patch}, num_channels={channels} read from {pixels} pixels per patch "
                                f"(square patches); pass --set patch_size=... --set num_channels=... otherwise")
    else:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if channels is None and pixels % (ph * pw) == 0:
            channels = pixels // (ph * pw)
        if channels is None or ph * pw * channels != pixels:
            raise ConversionError(f"{source.path}: {where} takes {pixels} pixels per patch, not patch_size {patch!r} "
                                  f"x {channels} channel(s)")
    fields["patch_size"], fields["num_channels"] = patch, channels
    evidence["patch_size"] = evidence["num_channels"] = "the config"


def _normal(value):
    """Compare JSON lists and tuples alike, and an int image/patch size with its square pair."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
        if len(value) == 2 and value[0] == value[1] and all(isinstance(v, int) for v in value):
            return value[0]
    return value
