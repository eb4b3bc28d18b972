"""Read ViT weights from any checkpoint format, through the one mapping table.

    config, params = read_flax_params("ViT-B_16.npz")        # any format -> Flax tree (NumPy leaves)
    config, state = read_state_dict("model.safetensors")      # any format -> timm-named dict (NumPy)

Formats: google-npz, flax (msgpack / orbax directory), torch (timm naming,
.safetensors or .pt/.pth), hf (Hugging Face ViT), torchvision (vit_b_16
naming), vit-pytorch (lucidrains' vit_pytorch.ViT), big-vision (big_vision's two-tower image tower, an .npz
read as google-npz); and a train.py run directory (one saved step).
Weights must be floating point, and finite unless `allow_nonfinite`. Tensors are read lazily and
converted one mapping rule at a time. Both models' `load_pretrained` and `python -m parity convert`
read through here; vit_jax.formats.stream reads the same rules lazily, never holding the model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np

from vit_jax.config import ConfigError, ViTConfig, get_config, unknown_field_hints
from vit_jax.formats import (
    FLAX,
    FORMATS,
    TIMM,
    ConversionError,
    TensorSource,
    config_sidecar,
    flax_ckpt,
    google_npz,
    hf,
    timm_hub,
    torch_sd,
    training_run,
)
from vit_jax.formats.base import replacing_marker
from vit_jax.formats.hub import resolve_checkpoint
from vit_jax.formats.infer import build_config
from vit_jax.formats.mapping import Rule, expected_flax_shapes, expected_torch_shapes, param_rules, unflatten
from vit_jax.options import summary as options_summary
from vit_jax.params import to_layout
from vit_jax.posemb import resize_pos_embed

Progress = Callable[[str], None]
# Per-tensor progress lines only for models this large (ViT-L and up: ~20 s or more to convert).
PROGRESS_MIN_ELEMENTS = 100_000_000
POSEMB_KEY = {FLAX: "Transformer/posembed_input/pos_embedding", TIMM: "pos_embed"}
HEAD_PREFIXES = {FLAX: ("head/", "head_dist/"), TIMM: ("head.", "head_dist.")}


def detect_format(path: str | os.PathLike) -> str:
    """The format of an existing checkpoint, from its contents (and extension where contents agree)."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    if path.is_dir():
        if timm_hub.is_timm_dir(path):
            return timm_hub.FORMAT
        if hf.weights_in_dir(path) is not None:
            return hf.FORMAT
        if flax_ckpt.orbax_item_dir(path) is not None:
            return flax_ckpt.FORMAT
        raise ConversionError(f"{path}: directory is neither an orbax checkpoint (no _METADATA) nor a Hugging Face "
                              f"model directory (none of {list(hf.WEIGHT_FILES)})")
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: file is empty")
    if google_npz.is_npz(path) or (path.suffix == ".npz" and _starts_with(path, b"PK")):
        return google_npz.FORMAT  # (a damaged .npz zip is reported by the npz reader)
    pytorch_suffix = path.suffix in (".pt", ".pth", ".bin", ".safetensors")
    if torch_sd.is_safetensors(path) or pytorch_suffix or _starts_with(path, b"PK"):
        naming = torch_sd.classify_keys(list(torch_sd.read(path).shapes))
        if naming is None:
            raise ConversionError(f"{path}: a PyTorch state dict, but not in a known ViT naming (timm "
                                  f"'patch_embed.proj.weight', torchvision 'conv_proj.weight', Hugging Face "
                                  f"'embeddings.patch_embeddings.projection.weight' or vit-pytorch "
                                  f"'to_patch_embedding.2.weight')")
        return naming
    if path.suffix == ".msgpack" or flax_ckpt.is_msgpack(path):
        return flax_ckpt.FORMAT
    raise ConversionError(f"{path}: unknown checkpoint format; pass --from one of {list(FORMATS)}")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def target_format(path: str | os.PathLike) -> str:
    """The format a destination's name asks for: .npz, .msgpack or a directory, .safetensors/.pt/.pth."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return google_npz.FORMAT
    if suffix == ".msgpack" or path.is_dir() or suffix == "":
        return flax_ckpt.FORMAT
    if suffix in (".safetensors", ".pt", ".pth", ".bin"):
        return torch_sd.FORMAT
    raise ConversionError(f"{path}: cannot tell the target format from the extension {suffix!r}; pass --to one of "
                          f"{list(FORMATS)}")


def check_format(name: str | None, flag: str) -> None:
    if name is not None and name not in FORMATS:
        raise ConversionError(f"unknown format {name!r} for {flag}; expected one of {list(FORMATS)}")


# -- reading ----------------------------------------------------------------
def _user_config(config: ViTConfig | str | os.PathLike | None) -> tuple[ViTConfig | None, bool]:
    """(config, is_preset) from a ViTConfig, a config JSON path, or a preset name."""
    if config is None or isinstance(config, ViTConfig):
        return config, False
    text = str(config)
    try:
        if text.endswith(".json") or Path(text).is_file():
            return ViTConfig.from_json(text), False
        return get_config(text), True
    except (ConfigError, OSError, json.JSONDecodeError, TypeError) as e:
        raise ConversionError(f"--config {text!r}: {e}") from None


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = config_sidecar(path)
    if replacing_marker(path).exists():
        raise ConversionError(f"{path}: a conversion was interrupted while replacing it and {sidecar.name} "
                              f"({replacing_marker(path).name} is still there), so the two may come from different "
                              f"conversions; convert again to {path} (which completes the interrupted one)")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
        ViTConfig.from_dict(data)
    except (OSError, json.JSONDecodeError, ConfigError, TypeError) as e:
        raise ConversionError(f"{sidecar}: not a valid ViT config JSON ({e})") from None
    return data


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: ViTConfig, naming: str) -> dict[str, tuple[int, ...]]:
    """Shapes per tensor name; cached because tracing the model for them dominates small conversions."""
    return expected_flax_shapes(config) if naming == FLAX else expected_torch_shapes(config)


def _check_tensors(source: TensorSource, config: ViTConfig) -> None:
    """Every tensor the config needs is there with its shape, and nothing else."""
    expected = _expected_shapes(config.replace(scan=False, remat=False), source.naming)
    missing = [k for k in expected if k not in source.shapes]
    unexpected = [k for k in source.shapes if k not in expected]
    described = (f"{config.num_layers} layers, hidden {config.hidden_size}, mlp {config.mlp_dim}, "
                 f"{config.num_heads} heads, classifier {config.classifier!r}, {config.num_classes} classes"
                 + (f", ResNet stem {config.resnet_layers}" if config.is_hybrid else ""))
    if missing:
        raise ConversionError(f"{source.path}: missing tensor {source.file_name(missing[0])!r} (expected shape "
                              f"{expected[missing[0]]}; {len(missing)} missing in all) for a ViT with {described}")
    if unexpected:
        raise ConversionError(f"{source.path}: unexpected tensor {source.file_name(unexpected[0])!r} "
                              f"{tuple(source.shapes[unexpected[0]])} ({len(unexpected)} unexpected in all) for a "
                              f"ViT with {described}")
    for key, shape in expected.items():
        if tuple(source.shapes[key]) != tuple(shape):
            raise ConversionError(f"{source.path}: tensor {source.file_name(key)!r} has shape "
                                  f"{tuple(source.shapes[key])}, expected {tuple(shape)} for a ViT with {described}")


def open_checkpoint(
    path: str | os.PathLike,
    format: str | None = None,
    config: ViTConfig | str | os.PathLike | None = None,
    step: int | None = None,
    new_head: bool = False,
    overrides: dict[str, Any] | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> tuple[ViTConfig, TensorSource]:
    """Read a checkpoint's tensor index and work out its config; tensors stay on disk until loaded.

    `step` picks the checkpoint of a training run directory (default: its best
    by eval accuracy, else its latest); `new_head` says a fresh head replaces
    the checkpoint's (so a config's head that the file lacks is not news);
    `overrides` are config fields stated outright (`--set`), checked against the tensors; `image_size`
    (the target resolution) settles a non-square grid that nothing else states.
    """
    check_format(format, "--from")
    path = Path(resolve_checkpoint(path))  # hf-hub:ORG/NAME -> its snapshot directory in the hub cache
    if format in (None, flax_ckpt.FORMAT) and training_run.locate(path) is not None:
        source = training_run.read(path, step)
    else:
        if step is not None:
            raise ConversionError(f"{path}: --step picks a checkpoint of a training run directory; this is not one")
        guessed = format is None and path.is_file() and path.suffix != ".msgpack"
        format = format or detect_format(path)
        if not path.exists():
            raise ConversionError(f"{path}: no such file or directory")
        module, _ = FORMATS[format]
        try:
            source = module.read(path)
        except ConversionError as e:
            if not (guessed and format == flax_ckpt.FORMAT):
                raise
            # Only its first byte suggested msgpack (a PNG's does too): say what else it is not.
            reason = str(e).removeprefix(f"{path}: ").split(";")[0]
            raise ConversionError(f"{path}: not a checkpoint in a format read here (tried Google .npz, safetensors, "
                                  f"PyTorch and Flax msgpack: {reason}); pass --from one of {list(FORMATS)} if it "
                                  f"is one") from None
        sidecar = _read_sidecar(path)
        if sidecar:
            source.stated = {**source.stated, **sidecar}
    user, is_preset = _user_config(config)
    _check_overrides(overrides)
    resolved = build_config(source, user, is_preset, overrides, image_size)
    _check_tensors(source, resolved)
    if user is not None and not is_preset and user.num_classes and not resolved.num_classes and not new_head:
        warnings.warn(f"{path} has no head tensors, so the {user.num_classes}-class head of the given config is "
                      f"dropped (the model outputs features); pass --num-classes {user.num_classes} for a fresh "
                      f"zero head")
    return resolved, source


def _check_overrides(overrides: dict[str, Any] | None) -> None:
    hints = unknown_field_hints(ViTConfig, overrides or {})
    if hints:
        raise ConversionError(f"--set: unknown config field(s): {', '.join(hints)}")
    annotations = typing.get_type_hints(ViTConfig)
    for field, value in (overrides or {}).items():
        if not _fits(value, annotations[field]):
            shown = json.dumps(value, default=str)
            raise ConversionError(f"--set {field}={shown}: expected {_describe(annotations[field])}, got "
                                  f"{type(value).__name__} (values are JSON: a pair is [48, 64])")


def _fits(value: Any, hint: Any) -> bool:
    """Whether `value` (parsed JSON) has the type ViTConfig annotates a field with."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (int, str, bool):
        return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    return True  # a type not spelled out here: the config's own validation judges it


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        inner = f"{_describe(args[0])}, ..." if args[-1] is Ellipsis else ", ".join(map(_describe, args))
        return f"a list [{inner}]"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _is_floating(dtype: np.dtype) -> bool:
    try:
        ml_dtypes.finfo(dtype)  # NumPy's floats and bfloat16 / float8
    except ValueError:
        return False
    return True


def load_checked(source: TensorSource, key: str, allow_nonfinite: bool) -> np.ndarray:
    """One tensor, refused by name when it is not floating point, or (unless allowed) not finite."""
    array = source.load(key)
    if not _is_floating(array.dtype):
        raise ConversionError(f"{source.path}: tensor {source.file_name(key)!r} is {array.dtype}; ViT weights must "
                              f"be floating point (float32, float16, bfloat16)")
    if not allow_nonfinite:
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ConversionError(f"{source.path}: tensor {source.file_name(key)!r} holds {bad} non-finite value(s) "
                                  f"(NaN or infinity) of {array.size}; pass --allow-nonfinite to accept them")
    return array


def source_keys(source: TensorSource, rule: Rule) -> tuple[str, ...]:
    """The tensors of `source` that `rule` is made from."""
    return rule.flax if source.naming == FLAX else (rule.torch,)


def rule_tensors(source: TensorSource, rule: Rule, config: ViTConfig, naming: str,
                 load: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """One mapping rule's tensors in `naming`, made from the source tensors `load` reads (`source_keys`)."""
    if source.naming == naming:
        return {key: load(key) for key in source_keys(source, rule)}
    if naming == TIMM:
        return {rule.torch: rule.transform.to_torch([load(p) for p in rule.flax])}
    return dict(zip(rule.flax, rule.transform.to_flax(load(rule.torch), config)))


def _convert_tensors(source: TensorSource, config: ViTConfig, naming: str, progress: Progress | None,
                     allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """All tensors in `naming`, one mapping rule at a time (source tensors are read as needed)."""
    rules = param_rules(config)
    out: dict[str, np.ndarray] = {}
    step = max(1, len(rules) // 10)
    if sum(math.prod(shape) for shape in source.shapes.values()) < PROGRESS_MIN_ELEMENTS:
        progress = None  # a small model converts in seconds: per-tensor lines would be noise

    def load(key: str) -> np.ndarray:
        return load_checked(source, key, allow_nonfinite)

    for done, rule in enumerate(rules, 1):
        out.update(rule_tensors(source, rule, config, naming, load))
        if progress and (done % step == 0 or done == len(rules)):
            progress(f"  converted {done}/{len(rules)} parameters")
    return out


def _target_config(config: ViTConfig, image_size, num_classes) -> ViTConfig:
    """`config` at the requested resolution and class count, validated."""
    if image_size is not None:
        try:
            config = config.replace(image_size=image_size)
        except ConfigError as e:
            raise ConversionError(f"--image-size {image_size}: {e}") from None
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ConversionError(f"--num-classes must be an integer >= 0, got {num_classes!r}")
        config = config.replace(num_classes=num_classes)
    return config


def _adapt(tensors: dict[str, np.ndarray], config: ViTConfig, target: ViTConfig, naming: str, new_head: bool) -> None:
    """Resize the position embeddings to `target`'s grid and/or put a fresh zero head on, in place."""
    if config.posemb == "learn" and target.grid_size != config.grid_size:
        key = POSEMB_KEY[naming]
        tensors[key] = resize_pos_embed(tensors[key], target.grid_size, config.posemb_prefix_tokens, config.grid_size,
                                        config.posemb_resize)
    if new_head:  # zero kernels and head_bias_init biases for the head (and the distillation head)
        heads = HEAD_PREFIXES[naming]
        dtype = tensors[next(iter(tensors))].dtype
        for key in [k for k in tensors if k.startswith(heads)]:
            del tensors[key]
        for key, shape in _expected_shapes(target.replace(scan=False, remat=False), naming).items():
            if key.startswith(heads):
                tensors[key] = np.full(shape, target.head_bias_init if key.endswith("bias") else 0.0, dtype)


def read_tensors(
    path: str | os.PathLike,
    naming: str,
    format: str | None = None,
    config: ViTConfig | str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    progress: Progress | None = None,
    check: Callable[[ViTConfig], None] | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[ViTConfig, dict[str, np.ndarray], TensorSource]:
    """(config, flat tensors in `naming`, source) for any checkpoint, resized/re-headed on request.

    `check` sees the final config before any tensor is read (a target format refusing it).
    """
    resolved, source = open_checkpoint(path, format, config, step, new_head=num_classes is not None,
                                       overrides=overrides, image_size=image_size)
    target = _target_config(resolved, image_size, num_classes)
    if check is not None:
        check(target)
    if progress:
        progress(f"read {source.path} ({source.format}, {len(source.shapes)} tensors): {describe(resolved)}")
        for note in source.notes:
            progress(f"  note: {note}")
    tensors = _convert_tensors(source, resolved, naming, progress, allow_nonfinite)
    _adapt(tensors, resolved, target, naming, new_head=num_classes is not None)
    return target, tensors, source


def read_flax_params(path, format=None, config=None, image_size=None, num_classes=None, progress=None, step=None,
                     allow_nonfinite=False, overrides=None):
    """(ViTConfig, nested Flax params of NumPy arrays, in the config's layout) from any format."""
    resolved, flat, _ = read_tensors(path, FLAX, format, config, image_size, num_classes, progress, step=step,
                                     allow_nonfinite=allow_nonfinite, overrides=overrides)
    return resolved, to_layout(unflatten(flat), resolved)


def read_state_dict(path, format=None, config=None, image_size=None, num_classes=None, progress=None, step=None,
                    allow_nonfinite=False, overrides=None):
    """(ViTConfig, timm-named state dict of NumPy arrays) from any format."""
    resolved, flat, _ = read_tensors(path, TIMM, format, config, image_size, num_classes, progress, step=step,
                                     allow_nonfinite=allow_nonfinite, overrides=overrides)
    return resolved, flat


def describe(config: ViTConfig) -> str:
    stem = f"ResNet stem {config.resnet_layers} width x{config.width_factor:g}, " if config.is_hybrid else ""
    return (f"{stem}patch {config.patch_size}, image {config.image_size}, hidden {config.hidden_size}, "
            f"mlp {config.mlp_dim}, heads {config.num_heads}, layers {config.num_layers}, "
            f"classifier {config.classifier}, representation {config.representation_size}, "
            f"classes {config.num_classes}, gelu {config.gelu}, eps {config.layer_norm_eps:g}"
            + (f", head dim {config.attention_head_dim}" if config.attention_head_dim else "")
            + (", patch norm" if config.patch_norm else "") + ("" if config.attention_out_proj else ", no out proj")
            + options_summary(config)
            + (f", rotary positions scaled to {config.rope_ref_grid}" if config.rope and config.rope_ref_grid else ""))


def _describe_options_2(config: ViTConfig) -> str:
    """The MAP head, SwiGLU, rotary and q/v-bias options for the summary line."""
    grid = f" (positions scaled to {config.rope_ref_grid})" if config.rope_ref_grid else ""
    return "".join(f", {text}" for on, text in (
        (config.mlp_type != "gelu", f"MLP {config.mlp_type}" + (" + sub-LN" if config.mlp_norm else "")),
        (config.rope, "rotary embedding" + grid), (not config.key_bias, "no key bias")) if on)
