"""The model's token assembly: patch embedding, prefix tokens, position embeddings (vit_jax/model.py uses these).

The functions create their modules and parameters in the calling module (Flax binds them to the module whose
`__call__` is running), so the parameter names stay Google's: `embedding`, `embedding_norm_{in,out}`, `cls`,
`dist`, `registers`, `mask_token` at the top level and `Transformer/posembed_input/pos_embedding`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.config import ViTConfig
from vit_jax.kernel_sets import layer_norm
from vit_jax.posemb import sincos_2d

Array = jax.Array


def patch_pixels(images: Array, patch_hw: tuple[int, int]) -> Array:
    """(n, H, W, C) -> (n, patches, ph * pw * C): row-major patches, each flattened as (ph, pw, C)."""
    (n, h, w, ch), (ph, pw) = images.shape, patch_hw
    x = jnp.reshape(images, (n, h // ph, ph, w // pw, pw, ch)).transpose(0, 1, 3, 2, 4, 5)
    return jnp.reshape(x, (n, (h // ph) * (w // pw), ph * pw * ch))


def embed_patches(c: ViTConfig, x: Array) -> Array:
    """(n, H, W, C) images (or a hybrid's feature map) -> (n, patches, D) tokens."""
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if c.patch_norm:  # vit-pytorch: LayerNorm over each patch's pixels, projection, LayerNorm
        x = layer_norm(c, "embedding_norm_in")(patch_pixels(x, c.patch_hw))
        x = jnp.reshape(x, (*x.shape[:2], *c.patch_hw, x.shape[-1] // (c.patch_hw[0] * c.patch_hw[1])))
        x = nn.DenseGeneral(c.hidden_size, axis=(-3, -2, -1), dtype=dtype, param_dtype=param_dtype,
                            name="embedding")(x)  # kernel (ph, pw, C, D), as the Conv's
        return layer_norm(c, "embedding_norm_out")(x)
    # Patches embedded by a strided convolution, then flattened to tokens.
    x = nn.Conv(
        c.hidden_size, c.patch_hw, strides=c.patch_hw, padding="VALID", use_bias=c.patch_bias, dtype=dtype,
        param_dtype=param_dtype, name="embedding",
    )(x)
    return jnp.reshape(x, (x.shape[0], -1, x.shape[-1]))


def prefix_tokens(module: nn.Module, n: int, d: int) -> tuple[Array | None, Array | None]:
    """(class [+ distillation] tokens, register tokens), each tiled over the batch, or None.

    The parameters are `module`'s own (the VisionTransformer's, at the top of the tree).
    """
    c = module.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if c.mask_token:  # transformers holds it for masked pre-training; inference never reads it
        module.param("mask_token", nn.initializers.zeros, (1, d), param_dtype)
    tokens = []
    if c.has_class_token:
        tokens.append(module.param("cls", nn.initializers.zeros, (1, 1, d), param_dtype))
    if c.distilled:
        tokens.append(module.param("dist", nn.initializers.normal(stddev=0.02), (1, 1, d), param_dtype))
    prefix = jnp.tile(jnp.concatenate(tokens, axis=1).astype(dtype), (n, 1, 1)) if tokens else None
    if not c.num_register_tokens:
        return prefix, None
    registers = module.param("registers", nn.initializers.normal(stddev=1e-6), (1, c.num_register_tokens, d),
                             param_dtype)
    return prefix, jnp.tile(registers.astype(dtype), (n, 1, 1))


class AddPositionEmbs(nn.Module):
    """Adds learned position embeddings (class slot included, as in vit_jax)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (1, x.shape[1], x.shape[2])
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape,
                         jnp.dtype(self.config.param_dtype))
        return x + pos.astype(x.dtype)


def add_posemb(c: ViTConfig, x: Array) -> Array:
    """The learned embedding (`posembed_input`, in the calling module) or the fixed 2-D sin-cos table."""
    if c.posemb == "learn":
        return AddPositionEmbs(c, name="posembed_input")(x)
    # fixed 2-D sin-cos; class slots, if any, get none (big_vision)
    table = jnp.asarray(sincos_2d(c.grid_size, c.hidden_size), dtype=x.dtype)
    return x + jnp.pad(table, ((0, 0), (x.shape[1] - c.num_patches, 0), (0, 0)))


def join_tokens(c: ViTConfig, patches: Array, prefix: Array | None, registers: Array | None) -> Array:
    """Prefix tokens, position embedding and registers, in the sources' order: class, distillation, registers, patches.

    The class and distillation tokens get position slots unless `posemb_class_slot` is off (timm's
    no_embed_class: add, then concatenate); registers never do (inserted after the embedding is added).
    """
    if prefix is not None and c.posemb_class_slot:
        x = add_posemb(c, jnp.concatenate([prefix, patches], axis=1))
    else:
        x = add_posemb(c, patches)
        x = x if prefix is None else jnp.concatenate([prefix, x], axis=1)
    if registers is not None:
        k = 0 if prefix is None else prefix.shape[1]
        x = jnp.concatenate([x[:, :k], registers, x[:, k:]], axis=1)
    return x
