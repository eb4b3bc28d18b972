"""The Vision Transformer in Flax Linen.

Module and parameter names match Google's `vit_jax` (models_vit.py), so its
released param trees load unchanged:

    embedding/{kernel,bias}            Conv, kernel (ph, pw, C, D)
    cls                                (1, 1, D)            token classifiers only
    Transformer/posembed_input/pos_embedding  (1, seq, D)   learned posemb only
    Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0
        {query,key,value}/kernel (D, H, hd), bias (H, hd); out/kernel (H, hd, D)
    Transformer/encoderblock_{i}/LayerNorm_1, MlpBlock_0/Dense_{0,1}
    Transformer/encoder_norm
    pre_logits/{kernel,bias}           representation_size only
    head/{kernel,bias}                 num_classes > 0 only

With `config.scan` the blocks are one scanned module, `Transformer/encoderblock`,
whose params carry a leading layer axis (see `stack_block_params`).

Intermediates (`return_intermediates=True`) use the canonical names shared with
the PyTorch twin: patch_embed, embed, blocks.{i}.attn, blocks.{i}.mlp,
blocks.{i}, norm, pre_logits, logits; `return_attention=True` adds
blocks.{i}.attn_probs of shape (B, heads, seq, seq).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.attention import attention, explicit_attention
from vit_jax.config import ViTConfig
from vit_jax.layer_norm import LayerNorm
from vit_jax.matmul import gelu_projection, shared_input_projections, token_dot_general
from vit_jax.posemb import sincos_2d

Array = jax.Array
Intermediates = dict[str, Array]

xavier_uniform = nn.initializers.xavier_uniform()
_MLP_BIAS_INIT = nn.initializers.normal(stddev=1e-6)


def _dtype(name: str):
    return jnp.dtype(name)


def _gelu(config: ViTConfig):
    # Rematerialised: the backward pass keeps only the GELU input (which the
    # MLP's first matmul produced anyway) instead of every elementwise
    # temporary of the formula (five activations of the MLP's width).
    return jax.checkpoint(functools.partial(nn.gelu, approximate=config.gelu == "tanh"))


def _layer_norm(config: ViTConfig, name: str) -> LayerNorm:
    # Not rematerialised: vit_jax.layer_norm's backward keeps the input and two
    # numbers per row, and the output is kept by the next layer's product for
    # its weight gradient whether or not the norm is recomputed. Under
    # `nn.remat` XLA:CPU ran the recomputation in the forward pass and kept
    # three full-width buffers per norm (vit_jax.ordering).
    return LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=_dtype(config.dtype),
        param_dtype=_dtype(config.param_dtype),
        name=name,
    )


class AddPositionEmbs(nn.Module):
    """Adds learned position embeddings (class slot included, as in vit_jax)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pos = self.param(
            "pos_embedding",
            nn.initializers.normal(stddev=0.02),
            (1, x.shape[1], x.shape[2]),
            _dtype(self.config.param_dtype),
        )
        return x + pos.astype(x.dtype)


class MlpBlock(nn.Module):
    config: ViTConfig
    train: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        dense = functools.partial(
            nn.Dense,
            dtype=_dtype(c.dtype),
            param_dtype=_dtype(c.param_dtype),
            kernel_init=xavier_uniform,
            bias_init=_MLP_BIAS_INIT,
            dot_general=token_dot_general,
        )
        x = dense(c.mlp_dim, name="Dense_0")(x)
        if not c.recompute_gelu:
            x = _gelu(c)(x)
            x = nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
            x = dense(c.hidden_size, name="Dense_1")(x)
            return nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
        # GELU and the second layer as one op whose backward pass recomputes
        # GELU's output instead of keeping it (gelu_projection); the config
        # allows this only without dropout. Same parameters as the path above.
        dtype = _dtype(c.dtype)
        kernel, bias = ProjectionParams(
            (c.hidden_size,),
            param_dtype=_dtype(c.param_dtype),
            bias_init=_MLP_BIAS_INIT,
            name="Dense_1",
        )(c.mlp_dim)
        y = gelu_projection(x.astype(dtype), kernel.astype(dtype), approximate=c.gelu == "tanh")
        return y + bias.astype(dtype)


class ProjectionParams(nn.Module):
    """The kernel and bias an `nn.DenseGeneral(features)` over the last input axis
    would create (same names, shapes and initial values), returned unapplied so
    that several projections of one input can share their backward pass
    (`vit_jax.matmul.shared_input_projections`)."""

    features: tuple[int, ...]
    use_bias: bool = True
    param_dtype: Any = jnp.float32
    kernel_init: Any = xavier_uniform
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int) -> tuple[Array, Array | None]:
        out_features = int(np.prod(self.features))

        def kernel_init(rng, shape, dtype):  # DenseGeneral initialises the (in, out) matrix
            return self.kernel_init(rng, (in_features, out_features), dtype).reshape(shape)

        kernel = self.param("kernel", kernel_init, (in_features, *self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, self.features, self.param_dtype)
        return kernel, bias


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with Flax's MHDPA parameter layout (query/key/value/out).

    Written out (rather than `nn.MultiHeadDotProductAttention`) to allow a qkv
    bias switch independent of the output bias, to choose the attention core
    (vit_jax.attention: cuDNN fused attention on GPU through
    `jax.nn.dot_product_attention`), and to return the probabilities on request.
    The query, key and value projections keep their three parameter sets (as
    in Google's checkpoints) and their three forward products; their backward
    pass is one input-gradient product over the concatenated kernels instead
    of three products whose results are summed (`shared_input_projections`;
    XLA:CPU's oneDNN path cannot compile that sum; see `vit_jax.cpu_matmuls`).
    One forward product over the concatenated kernels measured slower
    (Ti/16 inference ~65 vs ~70 img/s on a 2-core Xeon).
    """

    config: ViTConfig
    train: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array | None]:
        c = self.config
        dtype = _dtype(c.dtype)
        heads, head_dim = c.num_heads, c.head_dim
        projections = [
            ProjectionParams((heads, head_dim), c.qkv_bias, _dtype(c.param_dtype), name=name)(x.shape[-1])
            for name in ("query", "key", "value")
        ]
        q, k, v = shared_input_projections(x.astype(dtype), [kernel.astype(dtype) for kernel, _ in projections])
        if c.qkv_bias:
            q, k, v = (y + bias.astype(dtype) for y, (_, bias) in zip((q, k, v), projections))

        attention_dropout = self.train and c.attention_dropout_rate > 0
        probs = None
        if self.return_attention or attention_dropout:
            out, probs = explicit_attention(q, k, v)
            if attention_dropout:
                weights = nn.Dropout(rate=c.attention_dropout_rate)(probs, deterministic=False)
                out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        else:
            out = attention(q, k, v, c.attention_impl)
        out = nn.DenseGeneral(
            c.hidden_size,
            axis=(-2, -1),
            dtype=dtype,
            param_dtype=_dtype(c.param_dtype),
            kernel_init=xavier_uniform,
            dot_general=token_dot_general,
            name="out",
        )(out)
        return out, probs


def _drop_path(x: Array, rate, rng: Array) -> Array:
    """Stochastic depth: drops the whole residual branch per example."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block; returns (tokens, per-block intermediates)."""

    config: ViTConfig
    train: bool = False
    return_intermediates: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, inputs: Array, drop_path_rate) -> tuple[Array, Intermediates]:
        c = self.config
        uses_drop_path = self.train and c.stochastic_depth_rate > 0
        x = _layer_norm(c, "LayerNorm_0")(inputs)
        attn, probs = MultiHeadDotProductAttention(
            c, train=self.train, return_attention=self.return_attention, name="MultiHeadDotProductAttention_0"
        )(x)
        attn = nn.Dropout(rate=c.dropout_rate)(attn, deterministic=not self.train)
        if uses_drop_path:
            attn = _drop_path(attn, drop_path_rate, self.make_rng("dropout"))
        x = inputs + attn
        y = _layer_norm(c, "LayerNorm_1")(x)
        mlp = MlpBlock(c, train=self.train, name="MlpBlock_0")(y)
        if uses_drop_path:
            mlp = _drop_path(mlp, drop_path_rate, self.make_rng("dropout"))
        out = x + mlp

        aux: Intermediates = {}
        if self.return_intermediates:
            aux.update(attn=attn, mlp=mlp, out=out)
        if self.return_attention:
            aux["attn_probs"] = probs
        return out, aux


class Encoder(nn.Module):
    """Position embeddings, the blocks and the final norm (Google's 'Transformer').

    Returns every token, except with classifier 'token' and no intermediates:
    then the normalised class token alone, (n, 1, d).
    """

    config: ViTConfig
    train: bool = False
    return_intermediates: bool = False
    return_attention: bool = False

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Intermediates]:
        c = self.config
        inter: Intermediates = {}
        if c.posemb == "learn":
            x = AddPositionEmbs(c, name="posembed_input")(x)
        else:
            table = jnp.asarray(sincos_2d(c.grid_size, c.hidden_size), dtype=x.dtype)
            # The class slot (if any) gets no position signal, as in big_vision.
            table = jnp.pad(table, ((0, 0), (c.num_prefix_tokens, 0), (0, 0)))
            x = x + table
        x = nn.Dropout(rate=c.dropout_rate)(x, deterministic=not self.train)
        if self.return_intermediates:
            inter["embed"] = x

        block_kwargs = dict(
            config=c,
            train=self.train,
            return_intermediates=self.return_intermediates,
            return_attention=self.return_attention,
        )
        block_cls = Encoder1DBlock
        if c.remat:
            policy = getattr(jax.checkpoint_policies, c.remat_policy)
            block_cls = nn.remat(block_cls, prevent_cse=not c.scan, policy=policy)
        rates = c.drop_path_rates()
        if c.scan:
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=0,
                length=c.num_layers,
            )
            x, stacked = scanned(name="encoderblock", **block_kwargs)(x, jnp.asarray(rates, jnp.float32))
            per_block = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(c.num_layers)]
        else:
            per_block = []
            for i in range(c.num_layers):
                x, aux = block_cls(name=f"encoderblock_{i}", **block_kwargs)(x, rates[i])
                per_block.append(aux)
        for i, aux in enumerate(per_block):
            for key, value in aux.items():
                inter[f"blocks.{i}" if key == "out" else f"blocks.{i}.{key}"] = value

        if c.classifier == "token" and not self.return_intermediates:
            # The head reads only the class token: the final norm (per token, so
            # the numbers are the same) is applied to it alone; the output is
            # (n, 1, d). The point is speed, not the ~0.2% of work saved: with
            # oneDNN matmuls (vit_jax/cpu_matmuls.py), XLA:CPU's YNNPACK fusion
            # grew from a norm over every token into the whole last block after
            # its attention core, one kernel 26 ms long where its parts take
            # 15 ms, fed by four broadcast constants of MLP width materialised
            # first. Without it, ViT-Ti/16 b32 inference on a 2-core Xeon is 4-6%
            # faster (both forms compiled and timed alternately in one process;
            # +3% with XLA's matmuls, train step unchanged). With intermediates
            # requested every token is normalised.
            x = x[:, :1]
        x = _layer_norm(c, "encoder_norm")(x)
        if self.return_intermediates:
            inter["norm"] = x
        return x, inter


class VisionTransformer(nn.Module):
    """ViT over NHWC images (normalised as `config.pixel_mean/std` say).

    `apply(variables, images, train=False)` returns the logits (or the pooled
    features when num_classes == 0). With `return_intermediates` and/or
    `return_attention` it returns `(output, intermediates)`.
    """

    config: ViTConfig

    @nn.compact
    def __call__(
        self,
        images: Array,
        *,
        train: bool = False,
        return_intermediates: bool = False,
        return_attention: bool = False,
    ) -> Array | tuple[Array, Intermediates]:
        c = self.config
        c.check_image_shape(images.shape, "NHWC")
        dtype, param_dtype = _dtype(c.dtype), _dtype(c.param_dtype)
        x = images.astype(dtype)
        x = nn.Conv(
            c.hidden_size,
            kernel_size=c.patch_hw,
            strides=c.patch_hw,
            padding="VALID",
            dtype=dtype,
            param_dtype=param_dtype,
            name="embedding",
        )(x)
        n, gh, gw, d = x.shape
        x = jnp.reshape(x, (n, gh * gw, d))
        inter: Intermediates = {}
        if return_intermediates:
            inter["patch_embed"] = x
        if c.has_class_token:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), param_dtype)
            x = jnp.concatenate([jnp.tile(cls.astype(dtype), (n, 1, 1)), x], axis=1)

        x, encoder_inter = Encoder(
            c,
            train=train,
            return_intermediates=return_intermediates,
            return_attention=return_attention,
            name="Transformer",
        )(x)
        inter.update(encoder_inter)

        if c.classifier == "token":
            x = x[:, 0]
        elif c.classifier == "gap":
            # The mean as a sum of x / n: the scaling stays inside the reduction
            # (a separate `* 1/n` before the head's product is a form XLA:CPU's
            # oneDNN path cannot compile; vit_jax/cpu_matmuls.py).
            x = jnp.sum(x * (1.0 / x.shape[1]), axis=1)
        if c.representation_size is not None:
            x = nn.Dense(c.representation_size, dtype=dtype, param_dtype=param_dtype, name="pre_logits")(x)
            x = jnp.tanh(x)
        if return_intermediates:
            inter["pre_logits"] = x
        if c.num_classes:
            x = nn.Dense(
                c.num_classes,
                dtype=dtype,
                param_dtype=param_dtype,
                kernel_init=nn.initializers.zeros if c.head_zero_init else nn.initializers.lecun_normal(),
                bias_init=nn.initializers.constant(c.head_bias_init),
                name="head",
            )(x)
            if return_intermediates:
                inter["logits"] = x
        if return_intermediates or return_attention:
            return x, inter
        return x


def init_params(config: ViTConfig, rng: Array | int = 0) -> dict[str, Any]:
    """Fresh parameters for `config` (the 'params' collection)."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    images = jnp.zeros((1, *config.image_hw, config.num_channels), jnp.float32)
    init = jax.jit(lambda r: VisionTransformer(config).init(r, images, train=False))
    # Wait while `init` is alive: with oneDNN matmuls, freeing an executable that
    # is still running aborts the process (vit_jax/cpu_matmuls.py).
    return jax.block_until_ready(init(rng)["params"])


def param_shapes(config: ViTConfig) -> dict[str, Any]:
    """Parameter shapes and dtypes without allocating them."""
    images = jax.ShapeDtypeStruct((1, *config.image_hw, config.num_channels), jnp.float32)
    return jax.eval_shape(
        lambda x: VisionTransformer(config).init(jax.random.key(0), x, train=False), images
    )["params"]


def count_params(params: Any) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))
