"""`python -m parity report --checkpoint SRC --against-source`: the Flax model against the source library's own
model of SRC (timm's or transformers' modules, not the twin), layer by layer, with the report's judge.

Four whole-model runs, as in the report: the Flax model and the library's model, each in float32 and again in
float64 on CPU (the library's model `.double()`). What the library computes between its layers is read with
forward hooks on its own modules: timm's blocks (their output, the attention and MLP branches after LayerScale,
the attention probabilities of its non-fused attention path), transformers' encoder layers (their output and
the attention probabilities of its eager attention). A canonical layer the library does not expose is listed
as not compared, never as passed. With --backward, the gradients of the library's own parameters are written
in its own names and format and read back through the project's reader: the same name table as a conversion.
The whole model is held (not one block at a time): for checking a conversion, not for giant models.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import safetensors.torch
import torch

from parity import harness, judge
from parity.source_models import LIBRARIES, LibraryMissing, SourceModel, source_model
from parity.tolerances import tolerances_for
from vit_jax.config import ViTConfig
from vit_jax.formats.hub import resolve_checkpoint
from vit_jax.formats.mapping import unflatten
from vit_jax.formats.read import detect_format, read_flax_params
from vit_jax.model import VisionTransformer, apply_with_intermediates
from vit_jax.params import to_layout

LIBRARIES_READ = ("timm", "transformers")  # whose intermediates the hooks below know


class SourceUnavailable(ValueError):
    """No library model of the checkpoint can be built here (another format, the library not installed)."""


def open_source(checkpoint: str, config: ViTConfig) -> tuple[SourceModel, str]:
    checkpoint = str(resolve_checkpoint(checkpoint))  # an hf-hub: name, as the local directory it resolves to
    format = detect_format(checkpoint)
    if LIBRARIES.get(format) not in LIBRARIES_READ:
        raise SourceUnavailable(f"--against-source: {checkpoint} is {format}; it reads timm hub directories, "
                                f"timm-named state dicts and transformers directories")
    try:
        return source_model(Path(checkpoint), format, config, eager_attention=True), format
    except LibraryMissing as e:
        raise SourceUnavailable(f"--against-source: {e}") from None


# -- the library's intermediates, by canonical name ---------------------------------------------------------------
def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _timm_hooks(model: torch.nn.Module, config: ViTConfig) -> list[tuple[str, torch.nn.Module, str]]:
    """canonical name -> (module, 'out' for its output | 'in' for its input) in timm's VisionTransformer / Eva."""
    points = {"patch_embed": (model.patch_embed, "out")}
    if isinstance(getattr(model, "norm_pre", None), torch.nn.Identity):
        points["embed"] = (model.blocks[0], "in")  # (with a pre-norm, timm's block input is after it)
    for i, block in enumerate(model.blocks):
        points[f"blocks.{i}"] = (block, "out")
        for branch, scale in (("attn", "ls1"), ("mlp", "ls2")):
            if hasattr(block, scale):  # timm's Block: the branch after LayerScale (Identity without one)
                points[f"blocks.{i}.{branch}"] = (getattr(block, scale), "out")
        attention = block.attn
        if hasattr(attention, "fused_attn") and hasattr(attention, "attn_drop"):
            attention.fused_attn = False  # timm's explicit path: softmax, then attn_drop (identity in eval)
            points[f"blocks.{i}.attn_probs"] = (attention.attn_drop, "out")
    if not isinstance(getattr(model, "norm", None), torch.nn.Identity) and hasattr(model, "norm"):
        points["norm"] = (model.norm, "out")
    if hasattr(model, "head"):
        points["pre_logits"] = (model.head, "in")
    return [(name, module, where) for name, (module, where) in points.items()]


def _layer_list(model: torch.nn.Module, config: ViTConfig) -> torch.nn.ModuleList:
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == config.num_layers and (
                name.endswith("encoder.layer") or name.endswith("encoder.layers")):
            return module
    raise SourceUnavailable("--against-source: no encoder layer list of the transformers model was found")


def _transformers_hooks(model: torch.nn.Module, config: ViTConfig) -> list[tuple[str, torch.nn.Module, str]]:
    """Each encoder layer's output, and the probabilities its eager attention returns (the first of its attention
    modules to give a (batch, heads, N, N) tensor: the inner one, whichever the version nests)."""
    points = []
    for i, layer in enumerate(_layer_list(model, config)):
        points.append((f"blocks.{i}", layer, "out"))
        points += [(f"blocks.{i}.attn_probs", m, "probs") for n, m in layer.named_modules()
                   if "attention" in n or "attn" in n]
    return points


class Probe:
    """Forward hooks that keep the library's intermediates of one run."""

    def __init__(self, points: list[tuple[str, torch.nn.Module, str]], num_heads: int):
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, module, where in points:
            if where == "in":
                self.handles.append(module.register_forward_pre_hook(self._keep_input(name)))
            else:
                self.handles.append(module.register_forward_hook(self._keep_output(name, where, num_heads)))

    def _keep_input(self, name: str) -> Callable:
        def hook(module, args):
            self.values[name] = args[0]
        return hook

    def _keep_output(self, name: str, where: str, num_heads: int) -> Callable:
        def hook(module, args, output):
            if where == "probs":  # the (B, heads, N, N) tensor among the attention module's outputs
                found = [o for o in (output if isinstance(output, tuple) else (output,))
                         if isinstance(o, torch.Tensor) and o.dim() == 4 and o.shape[1] == num_heads
                         and o.shape[-1] == o.shape[-2]]
                if found:
                    self.values.setdefault(name, found[0])
            else:
                self.values[name] = _first(output)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def hook_points(source: SourceModel, config: ViTConfig) -> list[tuple[str, torch.nn.Module, str]]:
    """(canonical name, module, what of it to keep: 'out', 'in' or 'probs')."""
    if source.library.startswith("timm"):
        return _timm_hooks(source.module, config)
    return _transformers_hooks(source.module, config)


# -- the four runs ------------------------------------------------------------------------------------------------
def _torch_run(source: SourceModel, module: torch.nn.Module, config: ViTConfig, images: np.ndarray,
               targets: np.ndarray, dtype: torch.dtype, backward: bool):
    """(intermediates by canonical name as NumPy, gradients by the module's state-dict keys or None)."""
    probe = Probe(hook_points(dataclasses.replace(source, module=module), config), config.num_heads)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype)
    try:
        with torch.set_grad_enabled(backward):
            out = source.run(x, module)
            grads = None
            if backward:
                loss = harness._torch_loss(out, torch.from_numpy(targets), dtype)
                params = dict(module.named_parameters())
                values = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                grads = {k: (torch.zeros_like(p) if g is None else g).detach()
                         for (k, p), g in zip(params.items(), values)}
    finally:
        probe.remove()
    inter = {k: v.detach().double().numpy() for k, v in probe.values.items()}
    # the model's output is its last canonical layer: logits, or the features of a headless model
    inter.setdefault(config.layer_names(attention=True)[-1], out.detach().double().numpy())
    return inter, grads


def _jax_run(config: ViTConfig, params, images: np.ndarray, targets: np.ndarray, backward: bool):
    model = VisionTransformer(config)

    def forward(p):
        return apply_with_intermediates(model, {"params": p}, images.astype(config.dtype), return_attention=True)

    (out, inter) = jax.jit(forward)(params)
    inter = {k: np.asarray(v, np.float64) for k, v in inter.items()}
    inter["logits"] = np.asarray(out, np.float64)
    grads = None
    if backward:
        def loss(p):
            return harness._jax_loss(forward(p)[0], targets, config.dtype)
        grads = harness.flat_per_block(jax.jit(jax.grad(loss))(params))
    return inter, grads


def _flax_grads(source_path: Path, format: str, grads: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                config: ViTConfig) -> dict[str, np.ndarray]:
    """The library's gradients, by its own keys, read back as Flax paths through the project's reader."""
    tensors = {k: grads.get(k, torch.zeros_like(v)).contiguous() for k, v in state.items()}
    folder = Path(tempfile.mkdtemp(prefix="parity-grads-"))
    try:
        if source_path.is_dir():
            shutil.copy(source_path / "config.json", folder / "config.json")
            weights = folder / "model.safetensors"
        else:
            weights = folder / "grads.safetensors"
            (folder / "grads.safetensors.json").write_text(config.to_json())
        safetensors.torch.save_file(tensors, str(weights), metadata={"format": "pt"})
        _, params = read_flax_params(folder if source_path.is_dir() else weights, format, allow_nonfinite=True)
        return harness.flat_per_block(params)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def float64_attention(source: SourceModel, module64: torch.nn.Module) -> str | None:
    """transformers 4.x's eager attention takes its softmax in float32 whatever the model's dtype, so its float64
    run would not be exact: that run uses sdpa (float64 throughout), which returns no probabilities. Returns the
    note of the rows this leaves out, or None."""
    name, _, version = source.library.partition(" ")
    if name != "transformers" or int(version.split(".")[0]) >= 5:
        return None
    module64.config._attn_implementation = "sdpa"
    return (f"{source.library}'s eager attention takes its softmax in float32 even in a float64 model: its float64 "
            f"run uses sdpa, which does not expose the probabilities")


def not_compared_row(name: str, depth: int, reason: str) -> dict[str, Any]:
    return {"section": "forward", "name": name, "shape": [], "max_abs": None, "mean_abs": None, "rel_l2": None,
            "cosine": None, "ref_norm": None, "floored": False, "judged": False, "passed": True,
            "check": "not compared", "failed_checks": [], "jax_vs_f64": None, "torch_vs_f64": None,
            "f64_jax_vs_torch": None, "rounding_ratio": None, "depth": depth,
            "note": f"not compared: {reason}"}


def against_source_rows(checkpoint: str, config: ViTConfig, master: harness.Master, images: np.ndarray,
                        targets: np.ndarray, backward: bool, clock: dict) -> tuple[list[dict[str, Any]], set, str]:
    """(rows, zero-gradient parameters, 'timm 1.0.31') of the Flax model against the library's own model."""
    source, format = open_source(checkpoint, config)
    module64 = copy.deepcopy(source.module).double()
    float64_note = float64_attention(source, module64)
    flat = {p: np.asarray(master[p], np.float32) for p in master}
    params = to_layout(unflatten(flat), config)
    config64 = harness.float64_config(config)
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        jax32, jax_grads = _jax_run(config, params, images, targets, backward)
        jax64, jax_grads64 = _jax_run(config64, params64, images, targets, backward)
    src32, grads32 = _torch_run(source, source.module, config, images, targets, torch.float32, backward)
    src64, grads64 = _torch_run(source, module64, config, images, targets, torch.float64, backward)
    tol = tolerances_for(config.dtype)
    names = config.layer_names(attention=True)
    exposed = [n for n in names if n in src32 and n in src64 and n in jax32]
    notes = {n: float64_note for n in names if n in src32 and n not in src64}
    measured = {n: judge.measure(jax32[n], _like(src32[n], jax32[n]), jax64[n], _like(src64[n], jax64[n]))
                for n in exposed}
    rows = judge.forward_rows(config, tol, measured, only=exposed)
    compared = {r["name"]: r for r in rows}
    rows = [dict(compared[n], depth=depth) if n in compared else
            not_compared_row(n, depth, notes.get(n) or f"{source.library} does not expose this layer")
            for depth, n in enumerate(names)]
    zero_grad: set[str] = set()
    if backward:
        state = source.module.state_dict()
        path = Path(checkpoint)
        src = _flax_grads(path, format, grads32, state, config)
        src64 = _flax_grads(path, format, grads64, {k: v.double() for k, v in state.items()}, config)
        measured_grads = {p: judge.measure(jax_grads[p], src[p], jax_grads64[p], src64[p]) for p in jax_grads}
        zero_grad = judge.zero_gradient_params(config, measured_grads)
        rows += judge.gradient_rows(config, tol, measured_grads, zero_grad)
    return rows, zero_grad, source.library


def _like(value: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The library's tensor in the Flax layout when only the layout differs (same elements, same order)."""
    return value.reshape(reference.shape) if value.size == reference.size else value
