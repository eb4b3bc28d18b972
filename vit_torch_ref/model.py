"""The PyTorch twin of `vit_jax.VisionTransformer`: same config, same function.

State-dict keys follow timm's VisionTransformer, so a timm ViT of a matching
architecture loads with strict=True:

    patch_embed.proj.{weight,bias}   Conv2d, OIHW (with patch_norm: Linear over (ph, pw, C) pixels)
    patch_embed.norm_{in,out}        patch_norm only
    patch_embed.backbone.*           hybrids only: the ResNet stem (vit_torch_ref/resnet.py)
    cls_token (1, 1, D)              token classifiers only
    dist_token, reg_token            (1, 1, D), (1, R, D): distilled, num_register_tokens
    mask_token (1, D)                mask_token only (transformers'; not in timm)
    pos_embed (1, patches [+ class slots], D)   learned posemb only
    norm_pre                         pre_norm only
    blocks.{i}.norm1, blocks.{i}.attn.qkv (3D, D; q,k,v order), blocks.{i}.attn.proj, blocks.{i}.ls1.gamma,
    blocks.{i}.norm2, blocks.{i}.mlp.fc1, blocks.{i}.mlp.fc2, blocks.{i}.ls2.gamma   (ls: layer_scale only)
        blocks.{i}.attn.q_bias, v_bias (no qkv.bias) without key_bias; blocks.{i}.mlp.fc1_g, fc1_x, norm: SwiGLU
    attn_pool.latent, q, kv, proj, norm, mlp.fc1, mlp.fc2    classifier 'map' (vit_torch_ref/heads.py)
    norm                             unless fc_norm (then fc_norm, after pooling)
    pre_logits.fc                    representation_size only (Linear + tanh)
    head, head_dist                  num_classes > 0 only (head_dist: distilled)

Input is NCHW. Intermediates carry the canonical names of `ViTConfig.layer_names`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vit_jax.config import ViTConfig
from vit_torch_ref.glu import SwiGLU
from vit_torch_ref.heads import AttentionPool
from vit_torch_ref.resnet import build_backbone, reset_stem
from vit_torch_ref.rope import apply_rope, rope_table

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def sincos_2d(grid_size: tuple[int, int], width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2D sin-cos table (1, gh*gw, width) in float64, as in big_vision."""
    gh, gw = grid_size
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    quarter = width // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = y.reshape(-1, 1) * omega[None]
    x = x.reshape(-1, 1) * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


class PatchEmbed(nn.Module):
    """Patches of the image, or of the ResNet stem's feature map for a hybrid (timm's HybridEmbed)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.is_hybrid:
            self.backbone = build_backbone(config)
        self.proj = nn.Conv2d(
            config.stem_width, config.hidden_size, kernel_size=config.patch_hw, stride=config.patch_hw,
            bias=config.patch_bias,
        )

    def forward(self, x: torch.Tensor, inter: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if hasattr(self, "backbone"):
            x = self.backbone(x)
            if inter is not None:
                inter["stem"] = x.permute(0, 2, 3, 1)  # canonical NHWC, as the Flax model's
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, gh*gw, D), row-major patches


class NormedPatchEmbed(nn.Module):
    """`patch_norm` (vit-pytorch): LayerNorm over each patch's (ph, pw, C) pixels, Linear, LayerNorm."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        (ph, pw), d = config.patch_hw, config.hidden_size
        self.patch_hw = ph, pw
        self.norm_in = nn.LayerNorm(ph * pw * config.num_channels, eps=config.layer_norm_eps)
        self.proj = nn.Linear(ph * pw * config.num_channels, d)
        self.norm_out = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, inter: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        (b, ch, h, w), (ph, pw) = x.shape, self.patch_hw
        x = x.reshape(b, ch, h // ph, ph, w // pw, pw).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, ph * pw * ch)
        return self.norm_out(self.proj(self.norm_in(x)))


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.attn_drop = config.attention_dropout_rate
        separate = config.qkv_bias and not config.key_bias  # q and v biases, none on k (timm's Eva names)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.inner_dim, bias=config.qkv_bias and not separate)
        if separate:
            self.q_bias = nn.Parameter(torch.zeros(config.inner_dim))
            self.v_bias = nn.Parameter(torch.zeros(config.inner_dim))
        self.proj = nn.Linear(config.inner_dim, config.hidden_size) if config.attention_out_proj else nn.Identity()
        self.rope_prefix = config.num_prefix_tokens
        if config.rope:  # float64 here; the model's `.to(param_dtype)` rounds it once
            self.register_buffer("rope", rope_table(config.grid_size, config.rope_ref_grid, config.head_dim),
                                 persistent=False)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """(output, probabilities or None, q and k after the rotary embedding (B, 2, N, H, hd) or None)."""
        b, n, _ = x.shape
        qkv = self.qkv(x)
        if hasattr(self, "q_bias"):
            qkv = qkv + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd)
        rotated = None
        if hasattr(self, "rope"):
            q, k = apply_rope(q, self.rope, self.rope_prefix), apply_rope(k, self.rope, self.rope_prefix)
            rotated = torch.stack([q, k], dim=1).transpose(2, 3)
        dropout = self.attn_drop if self.training else 0.0
        probs = None
        if return_attention:
            q = q / math.sqrt(self.head_dim)
            logits = q @ k.transpose(-2, -1)
            # Softmax in at least float32, as in the Flax model; float64 stays float64.
            probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1).to(q.dtype)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out), probs, rotated


class QuickGELU(nn.Module):
    """QuickGELU: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (timm's `ls1/ls2.gamma`)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((config.hidden_size,), config.layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.act = QuickGELU() if config.gelu == "quick" else nn.GELU(
            approximate="tanh" if config.gelu == "tanh" else "none")
        self.fc2 = nn.Linear(config.mlp_dim, config.hidden_size)
        self.drop = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, config: ViTConfig, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config) if config.mlp_type == "gelu" else SwiGLU(config)
        self.drop = nn.Dropout(config.dropout_rate)
        self.drop_path = DropPath(drop_path_rate)
        self.ls1 = LayerScale(config) if config.layer_scale else nn.Identity()
        self.ls2 = LayerScale(config) if config.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        attn, probs, rotated = self.attn(self.norm1(x), return_attention)
        attn = self.drop_path(self.ls1(self.drop(attn)))
        x = x + attn
        mlp = self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x + mlp, attn, mlp, probs, rotated


class PreLogits(nn.Module):
    """Representation layer: Linear + tanh (timm's historic `pre_logits.fc`)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden_size, config.representation_size)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class VisionTransformer(nn.Module):
    """ViT over NCHW images; `forward` returns logits (or features if num_classes == 0).

    `forward(x, return_intermediates=True)` and/or `return_attention=True`
    returns `(output, intermediates)` with the canonical layer names.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = NormedPatchEmbed(c) if c.patch_norm else PatchEmbed(c)
        if c.has_class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        if c.distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        if c.num_register_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, c.num_register_tokens, c.hidden_size))
        if c.mask_token:  # transformers', held for the way back; never computed with
            self.mask_token = nn.Parameter(torch.zeros(1, c.hidden_size))
        if c.posemb == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.posemb_len, c.hidden_size))
        else:
            table = F.pad(sincos_2d(c.grid_size, c.hidden_size), (0, 0, c.posemb_prefix_tokens, 0))
            # Kept in float64 here; `self.to(param_dtype)` below rounds it once, as Flax does.
            self.register_buffer("pos_embed", table, persistent=False)
        self.pos_drop = nn.Dropout(c.dropout_rate)
        if c.pre_norm:
            self.norm_pre = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(c, rate) for rate in c.drop_path_rates())
        norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        if c.fc_norm:
            self.fc_norm = norm
        else:
            self.norm = norm
        if c.classifier == "map":
            self.attn_pool = AttentionPool(c, Mlp(c))
        if c.representation_size is not None:
            self.pre_logits = PreLogits(c)
        if c.num_classes:
            self.head = nn.Linear(c.features_dim, c.num_classes, bias=c.head_bias)
            if c.distilled:
                self.head_dist = nn.Linear(c.features_dim, c.num_classes, bias=c.head_bias)
        self.reset_parameters()
        self.to(torch_dtype(c.param_dtype))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialisation mirroring vit_jax (xavier-uniform dense, zero head, posemb N(0, 0.02))."""
        c = self.config
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and name not in ("head", "head_dist", "patch_embed.proj"):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    if name.endswith(("fc1", "fc2")):
                        nn.init.normal_(module.bias, std=1e-6)
                    else:
                        nn.init.zeros_(module.bias)
        proj = self.patch_embed.proj
        fan_in = proj.weight[0].numel()
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        if c.is_hybrid:
            reset_stem(self.patch_embed.backbone)
        if c.posemb == "learn":
            nn.init.normal_(self.pos_embed, std=0.02)
        if c.distilled:
            nn.init.normal_(self.dist_token, std=0.02)
        if c.num_register_tokens:
            nn.init.normal_(self.reg_token, std=1e-6)
        for head in [self.head, getattr(self, "head_dist", None)] if c.num_classes else []:
            if head is None:
                continue
            if c.head_zero_init:
                nn.init.zeros_(head.weight)
            else:
                nn.init.trunc_normal_(head.weight, std=math.sqrt(1.0 / c.features_dim) / 0.87962566103423978)
            if head.bias is not None:
                nn.init.constant_(head.bias, c.head_bias_init)

    def forward(self, images: torch.Tensor, return_intermediates: bool = False, return_attention: bool = False):
        c = self.config
        c.check_image_shape(tuple(images.shape), "NCHW")
        compute = torch_dtype(c.dtype)
        if compute != torch_dtype(c.param_dtype):  # e.g. bf16 compute over float32 params
            with torch.autocast(images.device.type, dtype=compute):
                return self._forward(images.to(compute), return_intermediates, return_attention)
        return self._forward(images.to(compute), return_intermediates, return_attention)

    def _forward(self, images: torch.Tensor, return_intermediates: bool, return_attention: bool):
        c = self.config
        inter: dict[str, torch.Tensor] = {}
        x = self.patch_embed(images, inter if return_intermediates else None)
        if return_intermediates:
            inter["patch_embed"] = x
        x = self.pos_drop(self._join_tokens(x))
        if return_intermediates:
            inter["embed"] = x
        if c.pre_norm:
            x = self.norm_pre(x)
            if return_intermediates:
                inter["norm_pre"] = x
        for i, block in enumerate(self.blocks):
            x, attn, mlp, probs, rotated = block(x, return_attention)
            if return_attention:
                inter[f"blocks.{i}.attn_probs"] = probs
            if return_intermediates:
                inter.update({f"blocks.{i}.attn": attn, f"blocks.{i}.mlp": mlp, f"blocks.{i}": x})
                if rotated is not None:
                    inter[f"blocks.{i}.rope"] = rotated
        if c.final_norm:
            x = self.norm(x)
            if return_intermediates:
                inter["norm"] = x
        if c.classifier == "token":
            x = x[:, 0] if not c.distilled else x[:, :2]
        elif c.classifier in ("gap", "token_gap"):
            x = x[:, c.num_prefix_tokens:].mean(dim=1)
        elif c.classifier == "map":
            x, pool_attn = self.attn_pool(x[:, c.num_prefix_tokens:])
            if return_intermediates:
                inter.update({"pool.attn": pool_attn, "pool": x})
        if c.fc_norm:
            x = self.fc_norm(x)
            if return_intermediates:
                inter["norm"] = x
        if c.representation_size is not None:
            x = self.pre_logits(x)
        if return_intermediates:
            inter["pre_logits"] = x
        if c.distilled and not c.num_classes:  # features: the mean of the two tokens (timm's forward_head)
            x = (x[:, 0] + x[:, 1]) / 2
        if c.num_classes:
            x = self.head(x) if not c.distilled else (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
            if return_intermediates:
                inter["logits"] = x
        if return_intermediates or return_attention:
            return x, inter
        return x

    def _join_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """Class, distillation, register and patch tokens and the position embedding (vit_jax.embedding.join_tokens)."""
        c, n = self.config, patches.shape[0]
        prefix = [getattr(self, name) for name in ("cls_token", "dist_token") if hasattr(self, name)]
        prefix = [t.expand(n, -1, -1).to(patches.dtype) for t in prefix]
        pos = self.pos_embed.to(patches.dtype)
        if c.posemb_class_slot:
            x = torch.cat(prefix + [patches], dim=1) + pos
        else:
            x = torch.cat(prefix + [patches + pos], dim=1)
        if c.num_register_tokens:
            k = len(prefix)
            x = torch.cat([x[:, :k], self.reg_token.expand(n, -1, -1).to(x.dtype), x[:, k:]], dim=1)
        return x
