"""The Vision Transformer (Dosovitskiy et al., ICLR 2021) in Flax Linen.

Module and parameter names match Google's `vit_jax` (models_vit.py), so its
released param trees load unchanged:

    embedding/{kernel,bias}            Conv, kernel (ph, pw, C, D); no bias without patch_bias (vit_jax/embedding.py)
    embedding_norm_{in,out}            patch_norm only (vit-pytorch's patch embedding)
    cls                                (1, 1, D)            token classifiers only
    dist, registers, mask_token        (1, 1, D), (1, R, D), (1, D): distilled, num_register_tokens, mask_token
    Transformer/posembed_input/pos_embedding  (1, patches [+ class slots], D)   learned posemb only
    Transformer/pre_norm               pre_norm only (a LayerNorm before the first block)
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0
        {query,key,value}/kernel (D, H, hd), bias (H, hd); out/kernel (H, hd, D) unless not attention_out_proj
    Transformer/encoderblock_{i}/LayerNorm_1, MlpBlock_0/Dense_{0,1}
    Transformer/encoderblock_{i}/LayerScale_{0,1}/scale   (D,) layer_scale only
        SwiGLU MLPs (vit_jax/glu.py): MlpBlock_0/Dense_0 (D, 2 mlp) packed, or gate, Dense_0, norm; no key/bias
        without key_bias; rope has no parameters (vit_jax/rope.py)
    MAPHead_0/probe, MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0   classifier 'map' (vit_jax/heads.py)
    Transformer/encoder_norm           unless fc_norm, which puts fc_norm after pooling instead
    pre_logits/{kernel,bias}           representation_size only
    head/{kernel,bias}, head_dist      num_classes > 0 only (head_dist: distilled; no biases without head_bias)

The token assembly (patch embedding, class/distillation/register tokens, position embeddings)
lives in vit_jax/embedding.py, the pooling and heads in vit_jax/heads.py; both create their
parameters in the calling module, so the names above stay where Google has them.

A hybrid (`config.resnet_layers` set) first runs Google's ResNet stem
(vit_jax/resnet.py: conv_root, gn_root, block{i}/unit{j}/... at the top level)
and embeds patches of its feature map.

With `config.scan` the blocks are one scanned module, `Transformer/encoderblock`,
whose params carry a leading layer axis (`vit_jax.stack_block_params`).

Every module sows its outputs into Flax's 'intermediates' collection, which costs nothing unless the
collection is mutable: `apply_with_intermediates` returns them under the names the PyTorch twin uses
(`ViTConfig.layer_names`), and `VisionTransformer.forward_intermediates` gives timm's block features.

A few operations come from `vit_jax.kernels` (`config.kernels`): plain Flax
and JAX by default, or the CPU kernels, which compute the same function.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.attention import attend, explicit_attention
from vit_jax.config import ViTConfig
from vit_jax.embedding import embed_patches, join_tokens, prefix_tokens
from vit_jax.glu import SwiGLU
from vit_jax.heads import head_output
from vit_jax.kernel_sets import kernels_for, layer_norm
from vit_jax.resnet import resnet_stem
from vit_jax.rope import apply_rope

Array = jax.Array
Intermediates = dict[str, Array]
INTERMEDIATES = "intermediates"  # the collection the modules sow their outputs into
HEAD_OUTPUT = "head_output."  # the prefix of the heads' sown outputs


def _block_layer(layer: type[nn.Module], c: ViTConfig, **kwargs) -> functools.partial:
    """A Dense/DenseGeneral of the blocks: Google's initialisation, the kernels' dot_general."""
    return functools.partial(
        layer,
        dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype),
        kernel_init=nn.initializers.xavier_uniform(),
        dot_general=kernels_for(c).dot_general,
        **kwargs,
    )


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch (layer_scale: timm's `ls1/ls2.gamma`)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        init = nn.initializers.constant(c.layer_scale_init)
        return x * self.param("scale", init, (x.shape[-1],), jnp.dtype(c.param_dtype)).astype(x.dtype)


class MlpBlock(nn.Module):
    config: ViTConfig
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c, ops = self.config, kernels_for(self.config)
        dense = _block_layer(nn.Dense, c, bias_init=nn.initializers.normal(stddev=1e-6))
        x = dense(c.mlp_dim, name="Dense_0")(x)

        def dropout(y: Array) -> Array:
            return nn.Dropout(rate=c.dropout_rate)(y, deterministic=not self.train)

        return ops.mlp_out(c, x, functools.partial(dense, c.hidden_size, name="Dense_1"), dropout)


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with the parameters of Flax's `nn.MultiHeadDotProductAttention`.

    Written out to allow a qkv bias switch independent of the output bias, to
    choose the attention core (`config.attention_impl`; cuDNN on GPU through
    `jax.nn.dot_product_attention`), and to return the probabilities.
    Returns (output, probabilities or None, q and k after the rotary embedding or None).
    """

    config: ViTConfig
    train: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array | None, Array | None]:
        c, ops = self.config, kernels_for(self.config)
        dense = _block_layer(nn.DenseGeneral, c)
        qkv = [  # key_bias off: biases on q and v only
            functools.partial(dense, features=(c.num_heads, c.head_dim), name=name,
                              use_bias=c.qkv_bias and (c.key_bias or name != "key"))
            for name in ("query", "key", "value")
        ]
        q, k, v = ops.project(x, qkv)  # each (batch, seq, heads, head_dim)
        rotated = None
        if c.rope:
            q, k = apply_rope(c, q), apply_rope(c, k)
            rotated = jnp.stack([q, k], axis=1)  # (batch, 2, seq, heads, head_dim)

        dropout = self.train and c.attention_dropout_rate > 0
        probs = None
        if self.return_attention or dropout:
            out, probs = explicit_attention(q, k, v)
            if dropout:
                weights = nn.Dropout(rate=c.attention_dropout_rate)(probs, deterministic=False)
                out = attend(weights, v)
        else:
            out = ops.attention(q, k, v, c.attention_impl)
        if c.attention_out_proj:
            out = dense(features=c.hidden_size, axis=(-2, -1), name="out")(out)
        else:  # vit-pytorch's Identity (heads x head_dim == hidden_size, the config checks)
            out = jnp.reshape(out, (*out.shape[:-2], c.inner_dim))
        return out, probs, rotated


def drop_path(x: Array, rate: Array | float, rng: Array) -> Array:
    """Stochastic depth: drops the whole residual branch per example."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block; sows attn, mlp, out (rope, attn_probs) into 'intermediates'."""

    config: ViTConfig
    train: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, inputs: Array, drop_path_rate: Array | float) -> Array:
        c = self.config
        stochastic_depth = self.train and c.stochastic_depth_rate > 0
        # Sharded training keeps the batch split here (vit_jax/sharding.py); without its rules, a no-op.
        inputs = nn.with_logical_constraint(inputs, ("batch", None, None))

        x = layer_norm(c, "LayerNorm_0")(inputs)
        attn, probs, rotated = MultiHeadDotProductAttention(
            c, train=self.train, return_attention=self.return_attention, name="MultiHeadDotProductAttention_0"
        )(x)
        attn = nn.Dropout(rate=c.dropout_rate)(attn, deterministic=not self.train)
        if c.layer_scale:
            attn = LayerScale(c, name="LayerScale_0")(attn)
        if stochastic_depth:
            attn = drop_path(attn, drop_path_rate, self.make_rng("dropout"))
        x = inputs + attn

        y = layer_norm(c, "LayerNorm_1")(x)
        mlp = (MlpBlock if c.mlp_type == "gelu" else SwiGLU)(c, train=self.train, name="MlpBlock_0")(y)
        if c.layer_scale:
            mlp = LayerScale(c, name="LayerScale_1")(mlp)
        if stochastic_depth:
            mlp = drop_path(mlp, drop_path_rate, self.make_rng("dropout"))
        out = x + mlp

        for name, value in (("attn", attn), ("mlp", mlp), ("out", out), ("rope", rotated), ("attn_probs", probs)):
            if value is not None:
                self.sow(INTERMEDIATES, name, value)
        return out


class Encoder(nn.Module):
    """Position embeddings, the blocks and the final norm (Google's 'Transformer').

    Takes the patch tokens and the prefix tokens (class, distillation; registers apart), which
    `join_tokens` places around the position embedding.
    """

    config: ViTConfig
    train: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, x: Array, prefix: Array | None = None, registers: Array | None = None) -> Array:
        c = self.config
        x = join_tokens(c, x, prefix, registers)  # vit_jax/embedding.py
        x = nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
        self.sow(INTERMEDIATES, "embed", x)
        if c.pre_norm:
            x = layer_norm(c, "pre_norm")(x)
            self.sow(INTERMEDIATES, "norm_pre", x)

        block = functools.partial(
            Encoder1DBlock if not c.remat else nn.remat(
                Encoder1DBlock, prevent_cse=not c.scan, policy=getattr(jax.checkpoint_policies, c.remat_policy)
            ),
            config=c,
            train=self.train,
            return_attention=self.return_attention,
        )
        rates = c.drop_path_rates()  # rising linearly to the last block
        if c.scan:  # what the blocks sow gets a leading layer axis, as their params do
            blocks = nn.scan(
                lambda module, x, rate: (module(x, rate), None),
                variable_axes={"params": 0, INTERMEDIATES: 0},
                split_rngs={"params": True, "dropout": True},
                length=c.num_layers,
            )
            x, _ = blocks(block(name="encoderblock"), x, jnp.asarray(rates, jnp.float32))
        else:
            for i in range(c.num_layers):
                x = block(name=f"encoderblock_{i}")(x, rates[i])

        if not c.final_norm:
            return x  # fc_norm: the norm comes after pooling
        # A 'token' head reads the class (and distillation) token alone, and the norm is per token: a kernel set
        # may norm just those, unless every token's norm is being captured.
        every_token = not (c.classifier == "token" and not self.is_mutable_collection(INTERMEDIATES))
        x = kernels_for(c).final_norm(x, layer_norm(c, "encoder_norm"), 0 if every_token else 1 + c.distilled)
        self.sow(INTERMEDIATES, "norm", x)
        return x


class VisionTransformer(nn.Module):
    """ViT over NHWC images (normalised as `config.pixel_mean/std` say).

    `apply(variables, images, train=False)` returns the logits (or the pooled features when num_classes == 0).
    Every canonical intermediate (`ViTConfig.layer_names`) is sown into the 'intermediates' collection:
    `apply_with_intermediates` returns them by name, `forward_intermediates` the blocks' outputs as timm does.
    `return_attention` computes each block's attention probabilities explicitly and sows them too
    (blocks.{i}.attn_probs, (B, heads, seq, seq)).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, return_attention: bool = False) -> Array:
        c = self.config
        c.check_image_shape(images.shape, "NHWC")

        x = images.astype(jnp.dtype(c.dtype))
        if c.is_hybrid:  # Google's hybrid: patches are cut from a ResNet's feature map
            x = resnet_stem(c, x)
            self.sow(INTERMEDIATES, "stem", x)
        x = embed_patches(c, x)  # strided Conv, or vit-pytorch's normed patches (vit_jax/embedding.py)
        n, _, d = x.shape
        self.sow(INTERMEDIATES, "patch_embed", x)
        prefix, registers = prefix_tokens(self, n, d)
        x = Encoder(c, train=train, return_attention=return_attention, name="Transformer")(x, prefix, registers)

        # pooling, fc_norm, pre-logits, the classifier and distillation heads (vit_jax/heads.py)
        x, head_inter = head_output(c, x, MlpBlock)
        for name, value in head_inter.items():  # apart from the head's module names ('pre_logits' is both)
            self.sow(INTERMEDIATES, HEAD_OUTPUT + name, value)
        return x

    def forward_intermediates(
        self,
        images: Array,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NHWC",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list | tuple[Array, list]:
        """timm's `forward_intermediates`: the outputs of the chosen blocks as patch grids.

        `indices`: the last n blocks (an int), or a list of block indices (negative from the end); all blocks by
        default. Returned in block order, without the prefix tokens (class, distillation, registers), as
        (B, grid_h, grid_w, D) for 'NHWC', (B, D, grid_h, grid_w) for 'NCHW', (B, patches, D) for 'NLC';
        `return_prefix_tokens` pairs each with its prefix tokens (B, prefix, D). `norm` applies the final norm
        (none under fc_norm, as timm's Identity). Unless `intermediates_only`, returns (every token after the
        final norm, the list). Call as `model.apply(variables, images, method="forward_intermediates")`.
        """
        c = self.config
        take = block_indices(c.num_layers, indices)
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt {output_fmt!r} is not one of {OUTPUT_FORMATS}")
        params = self.variables["params"]
        # A method cannot make its own 'intermediates' mutable: the same model is applied functionally, and what its
        # modules sow is read back.
        _, inter = apply_with_intermediates(VisionTransformer(c, parent=None), {"params": params}, images)
        blocks = [inter[f"blocks.{i}"] for i in take]
        if norm and c.final_norm:
            final_norm = _EncoderNorm(c, parent=None)  # a free module, applied on its own
            blocks = [final_norm.apply({"params": params["Transformer"]}, y) for y in blocks]
        grids = [_as_grid(c, y[:, c.num_prefix_tokens:], output_fmt) for y in blocks]
        if return_prefix_tokens:
            grids = [(grid, y[:, :c.num_prefix_tokens]) for grid, y in zip(grids, blocks)]
        if intermediates_only:
            return grids
        return (inter["norm"] if c.final_norm else inter[f"blocks.{c.num_layers - 1}"]), grids


OUTPUT_FORMATS = ("NHWC", "NCHW", "NLC")


class _EncoderNorm(nn.Module):
    """The encoder's final norm alone, applied to the 'Transformer' params (forward_intermediates' `norm`)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return layer_norm(self.config, "encoder_norm")(x)


def _as_grid(c: ViTConfig, patches: Array, output_fmt: str) -> Array:
    if output_fmt == "NLC":
        return patches
    grid = jnp.reshape(patches, (patches.shape[0], *c.grid_size, patches.shape[-1]))
    return grid if output_fmt == "NHWC" else jnp.transpose(grid, (0, 3, 1, 2))


def block_indices(num_layers: int, indices: int | Sequence[int] | None) -> list[int]:
    """The blocks `indices` picks, in block order: timm's `feature_take_indices` (last n, or a list)."""
    if indices is None:
        return list(range(num_layers))
    if isinstance(indices, (int, np.integer)):
        if not 1 <= indices <= num_layers:
            raise ValueError(f"indices={indices} asks for the last {indices} blocks; the model has {num_layers}")
        return list(range(num_layers - indices, num_layers))
    wrong = [i for i in indices if not -num_layers <= i < num_layers]
    if wrong:
        raise ValueError(f"block indices {wrong} are outside the model's {num_layers} blocks "
                         f"(0..{num_layers - 1}, or negative from the end)")
    return sorted({i % num_layers for i in indices})


def apply_with_intermediates(model: VisionTransformer, variables: dict, images: Array, **kwargs
                             ) -> tuple[Array, Intermediates]:
    """`model.apply` that also returns what the model sowed, under the canonical names (ViTConfig.layer_names)."""
    out, state = model.apply(variables, images, mutable=[INTERMEDIATES], **kwargs)
    return out, named_intermediates(state.get(INTERMEDIATES, {}), model.config.num_layers)


def named_intermediates(sown: dict, num_layers: int) -> Intermediates:
    """The 'intermediates' collection by canonical name: a block's 'out' is blocks.{i}, its 'attn' blocks.{i}.attn.

    Module paths and the heads' prefix are dropped (the canonical names are unique in the model); a scanned
    encoder's stacked values are split per block.
    """
    named: Intermediates = {}
    for key, value in sown.items():
        if key != "Transformer":
            named[key.removeprefix(HEAD_OUTPUT)] = value[0]
            continue
        for name, inner in value.items():
            if name == "encoderblock":  # scanned: one leading layer axis
                per_block = {i: jax.tree.map(lambda a, i=i: a[i], inner) for i in range(num_layers)}
            elif name.startswith("encoderblock_"):
                per_block = {int(name.removeprefix("encoderblock_")): inner}
            else:
                named[name] = inner[0]
                continue
            for i, block in per_block.items():
                named.update({f"blocks.{i}" if k == "out" else f"blocks.{i}.{k}": v[0] for k, v in block.items()})
    return named


def init_params(config: ViTConfig, rng: Array | int = 0) -> dict[str, Any]:
    """Fresh parameters for `config` (the 'params' collection)."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    images = jnp.zeros((1, *config.image_hw, config.num_channels), jnp.float32)
    init = jax.jit(lambda r: VisionTransformer(config).init(r, images, train=False))
    return jax.block_until_ready(init(rng)["params"])  # ready before `init` is freed


def param_shapes(config: ViTConfig) -> dict[str, Any]:
    """Parameter shapes and dtypes without allocating them."""
    images = jax.ShapeDtypeStruct((1, *config.image_hw, config.num_channels), jnp.float32)
    return jax.eval_shape(lambda x: VisionTransformer(config).init(jax.random.key(0), x, train=False), images)["params"]


def count_params(params: Any) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))
