"""Runs the Flax ViT and its PyTorch twin one block at a time, on one config, one set of weights and one batch.

Each framework at each precision is a `Side`: the model's own modules cut in
three stages, run on its own previous output. The embedding stage and the head
stage are the whole model with its encoder blocks stood in for (a Flax method
interceptor, a twin module in `blocks`), so everything outside the blocks
(stem, tokens, position embeddings, final norm, pooling, head) is the model's
own code; each block is the model's block module applied to that block's
parameters. Memory then holds one block's parameters and intermediates, plus the
blocks' inputs, whatever the depth:

- forward: embedding, then block i on the previous output; the caller compares
  every canonical intermediate of the four sides and lets them go.
- backward: the loss cotangent enters at the head; going down, each block's
  forward is recomputed from its saved input and its VJP gives that block's
  parameter gradients and the cotangent of its input (block-granularity
  rematerialisation, the same in both frameworks).
- parameters: a group's (one block's, or everything outside the blocks) tensors
  are made in the side's dtype when the group runs and dropped after.

Weights reach the twin only through the mapping table, and its gradients and
updated parameters come back through the same table, so a wrong rule shows up
as a numeric difference. Dropout and stochastic depth are off on both sides
(deterministic forward), so the runs are comparable element by element.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from vit_jax.config import ViTConfig
from vit_jax.formats import mapping
from vit_jax.formats.torch_arrays import to_numpy, to_torch
from vit_jax.model import INTERMEDIATES, Encoder1DBlock, VisionTransformer, apply_with_intermediates
from vit_jax.params import unstack_block_params

OUTER = None  # the group of every parameter outside the encoder blocks; block groups are their indices
Flat = dict[str, np.ndarray]  # '/'-joined Flax path (per-block layout) -> array
# The report's float32 weights, read group by group: a Flat, or a checkpoint's lazy mapping (vit_jax.formats.stream)
Master = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class AdamWSettings:
    """Hyper-parameters shared by optax.adamw and torch.optim.AdamW.

    Both apply decoupled weight decay to every parameter (no mask on either
    side): p <- p - lr * (adam_direction + weight_decay * p), where torch's
    `p.mul_(1 - lr * wd)` before the Adam update is the same expression.
    Both use eps outside the square root and bias-corrected moments. The update
    is per parameter, so one group's step is that group's part of the model's step.
    """

    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.05


def float64_config(config: ViTConfig) -> ViTConfig:
    return config.replace(dtype="float64", param_dtype="float64")


def cast_params(params: Any, dtype) -> Any:
    return jax.tree.map(lambda a: np.asarray(a, dtype), params)


def flat_per_block(tree: Any) -> Flat:
    """Nested (per-block or scanned) tree -> {'/'-path: NumPy array}, per-block layout."""
    return {k: np.asarray(v) for k, v in mapping.flatten(unstack_block_params(dict(tree))).items()}


def groups(config: ViTConfig) -> list[int | None]:
    """Parameter groups in forward order: outside the blocks, then each block."""
    return [OUTER, *range(config.num_layers)]


@contextlib.contextmanager
def full_float32_precision() -> Iterator[None]:
    """Pin float32 matmuls/convolutions to full precision on both sides (no TF32, no bf16 passes).

    A no-op on CPU, where both already compute in full float32; on GPU JAX's
    default precision and torch's cuDNN default would use TF32.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- loss: the same function in both frameworks -------------------------------
def _jax_loss(output: jax.Array, targets: jax.Array, dtype) -> jax.Array:
    """Mean softmax cross-entropy on integer labels, or mean squared error without a head."""
    output = output.astype(dtype)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        return optax.softmax_cross_entropy_with_integer_labels(output, targets).mean()
    return jnp.mean((output - targets.astype(dtype)) ** 2)


def _torch_loss(output: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    output = output.to(dtype)
    if not targets.is_floating_point():
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1).long())
    return torch.mean((output - targets.to(dtype)) ** 2)


LOSS_DESCRIPTION = (
    "mean softmax cross-entropy over fixed random labels (one per output row; per token for unpooled "
    "classifiers), or mean squared error to fixed random targets when num_classes = 0; computed in the "
    "parameter dtype on both sides. Gradients, AdamW steps and losses are all taken through the forward pass "
    "that yields the intermediates (explicit attention, which also returns the attention maps), one block at "
    "a time: each block's forward is recomputed from its saved input for its VJP, in both frameworks"
)


def stage_names(config: ViTConfig) -> tuple[list[str], list[str]]:
    """Canonical layers before the first block (embedding stage) and after the last (head stage)."""
    names = config.layer_names(attention=True)
    in_blocks = [i for i, n in enumerate(names) if n.startswith("blocks.")]
    first, last = (in_blocks[0], in_blocks[-1]) if in_blocks else (len(names), len(names) - 1)
    return names[:first], names[last + 1:]


def block_layer_name(index: int, key: str) -> str:
    """A block's intermediate under its canonical name (the Encoder's naming: its output is `blocks.{i}`)."""
    return f"blocks.{index}" if key == "out" else f"blocks.{index}.{key}"


class Side:
    """One framework at one precision, run a stage at a time.

    A group's parameters are made in the side's own form from a `Flat` dict in its dtype (`own`: a tree of
    device arrays, or torch tensors by key); the stages take them and give gradients in that form, which the
    optimizer steps; `flat` maps either back to Flax paths in NumPy, for comparisons only. Activations stay
    native (jax.Array / torch.Tensor) between stages; intermediates come back as NumPy.
    `seconds` is the time spent in this side's computations.
    """

    def __init__(self, name: str, config: ViTConfig) -> None:
        self.name, self.config, self.seconds = name, config, 0.0
        self.rules = mapping.rules_by_group(config)  # the mapping table by group, read once

    def paths(self, group: int | None) -> list[str]:
        """The Flax paths of one group's parameters."""
        return [p for rule in self.rules[group] for p in rule.flax]

    def params(self, master: Master, group: int | None) -> Any:
        """One group's parameters from the float32 `master`, in this side's dtype and own form: made when the group
        runs, the only copy of them at that precision."""
        return self.own(group, {p: np.asarray(master[p], self.param_dtype) for p in self.paths(group)})

    def timed(self, fn: Callable, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - start

    @property
    def param_dtype(self):
        return np.dtype(jnp.dtype(self.config.param_dtype))


# -- Flax ----------------------------------------------------------------------
def _stand_in_blocks(replacement: jax.Array | None, seen: list) -> Callable:
    """A Flax method interceptor: every encoder block records its input and returns `replacement` (or its input)."""

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, Encoder1DBlock) and context.method_name == "__call__":
            seen.append(args[0])
            return args[0] if replacement is None else replacement
        return next_fun(*args, **kwargs)

    return interceptor


class JaxSide(Side):
    def __init__(self, name: str, config: ViTConfig, device: jax.Device):
        super().__init__(name, config)
        self.device = device
        # The whole model with one (stood-in) block: its embedding and head are the model's own code.
        outer = VisionTransformer(config.replace(num_layers=1, scan=False, remat=False))
        block = Encoder1DBlock(config, return_attention=True)
        pre, post = stage_names(config)
        loss_dtype = jnp.dtype(config.param_dtype)

        def embed(p, images):
            seen: list = []
            with nn.intercept_methods(_stand_in_blocks(None, seen)):
                _, inter = apply_with_intermediates(outer, {"params": p}, images, return_attention=True)
            return seen[0], {k: inter[k] for k in pre}

        def head(p, images, x, targets):
            with nn.intercept_methods(_stand_in_blocks(x, [])):
                out, inter = apply_with_intermediates(outer, {"params": p}, images, return_attention=True)
            return _jax_loss(out, targets, loss_dtype), {k: inter[k] for k in post}

        def run_block(p, x):
            y, sown = block.apply({"params": p}, x, 0.0, mutable=[INTERMEDIATES])
            return y, {name: value[0] for name, value in sown[INTERMEDIATES].items()}

        def block_vjp(p, x, cotangent):
            return jax.vjp(lambda p, x: run_block(p, x)[0], p, x)[1](cotangent)

        def embed_vjp(p, images, cotangent):
            return jax.vjp(lambda p: embed(p, images)[0], p)[1](cotangent)[0]

        def head_vjp(p, images, x, targets):
            loss, pullback, inter = jax.vjp(lambda p, x: head(p, images, x, targets), p, x, has_aux=True)
            return (loss, *pullback(jnp.ones_like(loss)), inter)

        # Compiled once per side (every block has the same shapes). Results are waited for while the compiled
        # functions are alive: with oneDNN matmuls, freeing a running executable aborts (vit_jax/cpu/onednn.py).
        self._fns = {name: jax.jit(fn) for name, fn in (
            ("embed", embed), ("head", head), ("block", run_block), ("block_vjp", block_vjp),
            ("embed_vjp", embed_vjp), ("head_vjp", head_vjp), ("add", lambda a, b: jax.tree.map(jnp.add, a, b)))}
        self._adamw: dict[AdamWSettings, tuple] = {}

    def _call(self, fn: str, *args):
        with jax.default_device(self.device):
            args = jax.device_put(args, self.device)
            return self.timed(lambda: jax.block_until_ready(self._fns[fn](*args)))

    def own(self, group: int | None, params: Flat) -> dict:
        """The group's parameters as the model's tree (a block's without its prefix), on the side's device."""
        strip = "" if group is OUTER else mapping.block_prefixes(group)[0]
        with jax.default_device(self.device):
            return jax.device_put(mapping.unflatten({k[len(strip):]: v for k, v in params.items()}), self.device)

    def flat(self, group: int | None, tree: Any) -> Flat:
        prefix = "" if group is OUTER else mapping.block_prefixes(group)[0]
        return {prefix + k: np.asarray(v) for k, v in mapping.flatten(tree).items()}

    def add(self, a: Any, b: Any) -> Any:
        """The outer group's gradients from its two stages; each leaf is zero in one of them, so the sum is exact."""
        return self._call("add", a, b)

    def inputs(self, images: np.ndarray, targets: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(images, self.param_dtype), jnp.asarray(targets)

    def embed(self, params: dict, images) -> tuple[jax.Array, dict[str, np.ndarray]]:
        x, inter = self._call("embed", params, images)
        return x, {k: np.asarray(v) for k, v in inter.items()}

    def block(self, index: int, params: dict, x) -> tuple[jax.Array, dict[str, np.ndarray]]:
        y, inter = self._call("block", params, x)
        return y, {block_layer_name(index, k): np.asarray(v) for k, v in inter.items()}

    def head(self, params: dict, images, x, targets) -> tuple[float, dict[str, np.ndarray]]:
        loss, inter = self._call("head", params, images, x, targets)
        return float(loss), {k: np.asarray(v) for k, v in inter.items()}

    def head_vjp(self, params: dict, images, x, targets) -> tuple[float, dict, jax.Array, dict[str, np.ndarray]]:
        """(loss, gradients of the outer parameters' head part, cotangent of x, the head's intermediates)."""
        loss, grads, cotangent, inter = self._call("head_vjp", params, images, x, targets)
        return float(loss), grads, cotangent, {k: np.asarray(v) for k, v in inter.items()}

    def block_vjp(self, index: int, params: dict, x, cotangent) -> tuple[dict, jax.Array]:
        return self._call("block_vjp", params, x, cotangent)

    def embed_vjp(self, params: dict, images, cotangent) -> dict:
        return self._call("embed_vjp", params, images, cotangent)

    def optimizer(self, settings: AdamWSettings) -> JaxAdamW:
        return JaxAdamW(self, settings)

    def adamw(self, s: AdamWSettings) -> tuple[Callable, Callable]:
        """(optax.adamw's init, its step), compiled once per side and settings: every AdamW of the report shares
        them (an eager init compiles op by op)."""
        if s not in self._adamw:
            tx = optax.adamw(s.learning_rate, s.b1, s.b2, s.eps, weight_decay=s.weight_decay)

            def step(p, state, g):
                updates, state = tx.update(g, state, p)
                return optax.apply_updates(p, updates), state

            self._adamw[s] = jax.jit(tx.init), jax.jit(step)
        return self._adamw[s]


class JaxAdamW:
    """optax.adamw, one state per parameter group (its update is per parameter)."""

    def __init__(self, side: JaxSide, settings: AdamWSettings):
        self.side, self.states = side, {}
        self._init, self._step = side.adamw(settings)

    def step(self, group: int | None, params: dict, grads: dict) -> dict:
        """The group's parameters (the side's own form) after one step."""
        side = self.side
        with jax.default_device(side.device):
            state = self.states.get(group)
            if state is None:  # placed as the step's own output: one compiled step per group structure
                state = jax.device_put(side.timed(lambda: self._init(params)), side.device)
            params, self.states[group] = side.timed(lambda: jax.block_until_ready(self._step(params, state, grads)))
        return params

    def forget(self, group: int | None) -> None:
        self.states.pop(group, None)


# -- PyTorch -------------------------------------------------------------------
class _StandIn(torch.nn.Module):
    """Takes the place of the twin's blocks: records their input, returns `replacement` (or the input)."""

    def __init__(self):
        super().__init__()
        self.seen: torch.Tensor | None = None
        self.replacement: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        self.seen = x
        return (x if self.replacement is None else self.replacement), None, None, None, None


@functools.lru_cache(maxsize=8)
def _block_buffers(config: ViTConfig, device: str) -> dict[str, torch.Tensor]:
    """The twin block's buffers outside its state dict (the rotary tables), made once: every block has the same."""
    from vit_torch_ref.model import Block

    with torch.device(device):
        block = Block(config, 0.0)
    in_state_dict = block.state_dict().keys()
    return {name: buffer for name, buffer in block.named_buffers() if name not in in_state_dict}


def torch_block(config: ViTConfig, index: int, tensors: dict[str, torch.Tensor], device: str) -> torch.nn.Module:
    """The twin's block `index` holding `tensors` (its state dict, keys without `blocks.{index}.`)."""
    from vit_torch_ref.model import Block

    # Built on 'meta' (a random init of tensors replaced at once cost a fifth of a small model's training), then
    # given `tensors` and the buffers outside the state dict, which need real values.
    with torch.device("meta"):
        block = Block(config, config.drop_path_rates()[index])
    block.load_state_dict(tensors, strict=True, assign=True)
    for name, buffer in _block_buffers(config, device).items():
        owner, _, attr = name.rpartition(".")
        setattr(block.get_submodule(owner), attr, buffer)
    return block.eval()


class TorchSide(Side):
    def __init__(self, name: str, config: ViTConfig, device: str):
        from vit_torch_ref.model import VisionTransformer as Twin
        from vit_torch_ref.model import torch_dtype

        super().__init__(name, config)
        self.device = device
        self.dtype, self.compute = torch_dtype(config.param_dtype), torch_dtype(config.dtype)
        self.outer = Twin(config.replace(num_layers=1)).to(device).eval()
        self.stand_in = _StandIn()
        self.outer.blocks = torch.nn.ModuleList([self.stand_in])
        self.pre, self.post = stage_names(config)

    def _autocast(self):
        # as the twin's forward: bf16 compute over float32 parameters runs under autocast
        if self.compute == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.compute)

    def own(self, group: int | None, params: Flat) -> dict[str, torch.Tensor]:
        """The group's parameters as the twin's tensors (a block's keys without its prefix), on the side's device."""
        strip = "" if group is OUTER else mapping.block_prefixes(group)[1]
        flat = mapping.rules_to_torch(params, self.rules[group], strip)
        return {k: to_torch(v).to(self.device) for k, v in flat.items()}

    def module(self, group: int | None, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
        if group is OUTER:
            self.outer.load_state_dict(tensors, strict=True)
            return self.outer
        return torch_block(self.config, group, tensors, self.device)

    def flat(self, group: int | None, tensors: dict[str, torch.Tensor]) -> Flat:
        """A group's tensors (torch keys without the block's prefix) mapped back to Flax paths."""
        strip = "" if group is OUTER else mapping.block_prefixes(group)[1]
        # Copies: to_numpy shares memory, and the optimizer updates its parameters in place.
        tensors = {key: to_numpy(value).copy() for key, value in tensors.items()}
        return mapping.rules_to_flax(tensors, self.rules[group], self.config, strip)

    def add(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The outer group's gradients from its two stages; each tensor is zero in one of them, so the sum is exact."""
        return {k: a[k] + b[k] for k in a}

    @staticmethod
    def _grads(module: torch.nn.Module, grads: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """`grads` (one per parameter of `module`, None for an unused one: zero) by the module's keys."""
        return {key: torch.zeros_like(p) if g is None else g for (key, p), g in zip(module.named_parameters(), grads)}

    def inputs(self, images: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(self.device, self.dtype)
        return x, torch.from_numpy(np.ascontiguousarray(targets)).to(self.device)

    def _embed(self, model: torch.nn.Module, images: torch.Tensor):
        self.stand_in.replacement = None
        _, inter = model(images, return_intermediates=True, return_attention=True)
        x, self.stand_in.seen = self.stand_in.seen, None
        return x, {k: to_numpy(inter[k]) for k in self.pre}

    def _head(self, model: torch.nn.Module, images, x, targets):
        self.stand_in.replacement = x
        out, inter = model(images, return_intermediates=True, return_attention=True)
        self.stand_in.replacement = None
        return _torch_loss(out, targets, self.dtype), {k: to_numpy(inter[k]) for k in self.post}

    def _block(self, model: torch.nn.Module, index: int, x):
        with self._autocast():
            y, attn, mlp, probs, rotated = model(x, True)
        inter = {f"blocks.{index}.attn_probs": probs, f"blocks.{index}.attn": attn, f"blocks.{index}.mlp": mlp}
        if rotated is not None:  # q and k after the rotary embedding (rope)
            inter[f"blocks.{index}.rope"] = rotated
        return y, inter

    def embed(self, params: dict, images):
        with torch.no_grad():
            x, inter = self.timed(self._embed, self.module(OUTER, params), images)
        return x, inter

    def block(self, index: int, params: dict, x):
        with torch.no_grad():
            y, inter = self.timed(self._block, self.module(index, params), index, x)
        inter = {k: to_numpy(v) for k, v in inter.items()}
        return y, {**inter, f"blocks.{index}": to_numpy(y)}

    def head(self, params: dict, images, x, targets):
        with torch.no_grad():
            loss, inter = self.timed(self._head, self.module(OUTER, params), images, x, targets)
        return loss.item(), inter

    def _vjp(self, module: torch.nn.Module, run: Callable, x, cotangent=None, input_grad: bool = True):
        """(output, grads of the module's parameters (None: unused), grad of x) of `run(module, x)`."""
        params = list(module.parameters())
        with torch.enable_grad():
            x = x.detach().requires_grad_(input_grad)
            out = run(module, x)
            grads = torch.autograd.grad(out, [x, *params] if input_grad else params, cotangent, allow_unused=True)
        return out, list(grads[-len(params):]), grads[0] if input_grad else None

    def head_vjp(self, params: dict, images, x, targets):
        module, inter = self.module(OUTER, params), {}

        def run(module, x):
            loss, head_inter = self._head(module, images, x, targets)
            inter.update(head_inter)
            return loss

        loss, grads, cotangent = self.timed(self._vjp, module, run, x)
        return loss.item(), self._grads(module, grads), cotangent, inter

    def block_vjp(self, index: int, params: dict, x, cotangent):
        module = self.module(index, params)
        _, grads, cotangent = self.timed(self._vjp, module, lambda m, x: self._block(m, index, x)[0], x, cotangent)
        return self._grads(module, grads), cotangent

    def embed_vjp(self, params: dict, images, cotangent):
        module = self.module(OUTER, params)
        _, grads, _ = self.timed(self._vjp, module, lambda m, images: self._embed(m, images)[0], images, cotangent,
                                 False)
        return self._grads(module, grads)

    def optimizer(self, settings: AdamWSettings) -> TorchAdamW:
        return TorchAdamW(self, settings)


class TorchAdamW:
    """torch.optim.AdamW, one optimizer (and the parameters it steps, by torch key) per parameter group."""

    def __init__(self, side: TorchSide, settings: AdamWSettings):
        self.side, self.settings, self.held = side, settings, {}

    def step(self, group: int | None, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict:
        """`params` after one step (a group seen first is stepped in place; one seen before continues from the
        tensors it returned, which `params` then are)."""
        side, s = self.side, self.settings
        if group not in self.held:  # torch keeps the optimizer's state by parameter object: keep the parameters
            held = {key: torch.nn.Parameter(t) for key, t in params.items()}
            optimizer = torch.optim.AdamW(held.values(), lr=s.learning_rate, betas=(s.b1, s.b2), eps=s.eps,
                                          weight_decay=s.weight_decay)
            self.held[group] = held, optimizer
        held, optimizer = self.held[group]
        for key, grad in grads.items():
            held[key].grad = grad
        side.timed(optimizer.step)
        return {key: p.detach() for key, p in held.items()}

    def forget(self, group: int | None) -> None:
        self.held.pop(group, None)
