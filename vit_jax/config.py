"""ViT configuration: one frozen dataclass and a registry of named presets.

The config is framework-neutral (no jax or torch import): the Flax model, the
PyTorch twin and the converters all read it, so every numerics choice (GELU
form, LayerNorm epsilon, qkv bias, pooling, input normalisation) is stated once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from typing import Any

from vit_jax.families import FAMILIES
from vit_jax.options import option_default, tensor_options

CLASSIFIERS = ("token", "gap", "unpooled", "token_unpooled", "token_gap", "map")
# The MLP of each block: GELU (Dense, GELU, Dense) or SwiGLU, silu(gate) * value: packed, one fc1 whose first half
# is the gate (timm's SwiGLUPacked), or separate gate and value layers (timm's Eva with scale_mlp).
MLP_TYPES = ("gelu", "swiglu_packed", "swiglu")
# 'quick': x * sigmoid(1.702 x), QuickGELU.
GELU_FORMS = ("tanh", "exact", "quick")
POSEMB_KINDS = ("learn", "sincos2d")
DTYPES = ("float32", "bfloat16", "float16", "float64")
KERNELS = ("reference", "cpu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit", "recompute")
# Fields that choose how the function is computed, not which function: the
# torch twin and the converters ignore them, and a parity run may vary them.
RUNTIME_FIELDS = ("kernels", "attention_impl", "remat", "remat_policy", "scan", "recompute_gelu")
# Fields a checkpoint's tensors fix (its shapes and which tensors exist); the rest of the function's fields
# are numerics (GELU form, epsilons, input normalisation), which a converter records beside the weights.
ARCHITECTURE_FIELDS = ("patch_size", "num_channels", "hidden_size", "mlp_dim", "num_layers", "num_heads", "qkv_bias",
                       "posemb", "representation_size", "classifier", "image_size", "num_classes", "patch_norm",
                       "attention_head_dim", "attention_out_proj", "resnet_layers", "width_factor",
                       *tensor_options())  # the families' options (vit_jax/options.py)
# With `remat`, what each block keeps for the backward pass (names from
# jax.checkpoint_policies): nothing but its input, or also the outputs of its
# matmuls (the linear layers only, or those and the attention products).
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")
# Weight standardisation of the hybrid's ResNet convolutions (docs/model.md, "Hybrid ResNet + ViT"):
# 'std': (w - mean) / (std + eps), Google's; 'var': (w - mean) / sqrt(var + eps), timm's.
STEM_WS_FORMS = ("std", "var")
STEM_GROUPS = 32  # GroupNorm groups in the ResNet stem (Google's and timm's)
# How the position grid is resized for another image size (vit_jax/posemb.py RESIZE_METHODS): Google's
# bilinear, or torch's bicubic as transformers ('torch_bicubic') and timm ('torch_bicubic_antialias') do it.
POSEMB_RESIZE = ("bilinear", "bicubic", "torch_bicubic", "torch_bicubic_antialias")


class ConfigError(ValueError):
    """An invalid configuration or an unknown preset name."""


def to_pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`16` -> (16, 16); `(16, 8)` -> (16, 8)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ConfigError(f"expected an int or a pair (height, width), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture and numerics of one Vision Transformer.

    Defaults follow Google's `vit_jax` (tanh GELU, LayerNorm eps 1e-6, learned
    position embeddings with the class token included, inputs in [-1, 1]).
    """

    name: str = "custom"
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    num_channels: int = 3
    num_classes: int = 1000  # 0: no head, the model returns features.
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    # token: class token; gap: mean over patch tokens; unpooled: every token;
    # token_unpooled: class token prepended, every token returned;
    # token_gap: class token prepended, the head reads the mean of the patch tokens;
    # map: no class token, a learned probe attends over the tokens (a MAP head, vit_jax/heads.py).
    classifier: str = "token"
    representation_size: int | None = None  # pre-logits Dense + tanh
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0  # largest drop-path rate, reached at the last block
    # 'tanh' (Flax nn.gelu default, Google training), 'exact' (erf; torch/timm/HF), 'quick' (QuickGELU)
    gelu: str = "tanh"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    posemb: str = "learn"  # 'learn' or 'sincos2d' (fixed, big_vision style; class slot gets zero)
    head_zero_init: bool = True
    head_bias_init: float = 0.0
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # Input normalisation applied by data pipelines to images scaled to [0, 1].
    # 0.5/0.5 is Google's (x - 127.5) / 127.5.
    pixel_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # -- options of lucidrains' vit-pytorch (vit_jax/formats/vit_pytorch.py); the defaults are Google's --
    # LayerNorm(patch pixels) -> projection -> LayerNorm(hidden), pixels flattened as (ph, pw, C).
    patch_norm: bool = False
    attention_head_dim: int | None = None  # None: hidden_size // num_heads; else q/k/v are heads x this wide
    attention_out_proj: bool = True  # False: no output projection (needs heads x head_dim == hidden_size)
    # -- hybrid ResNet stem (vit_jax/resnet.py); None: a plain ViT, patches cut from the image --
    # Bottleneck units per stage; () is the root conv + max pool alone (Google's R+ViT-Ti).
    resnet_layers: tuple[int, ...] | None = None
    width_factor: float = 1.0  # root width int(64 * width_factor); stage i is 4 * width * 2**i wide
    stem_ws_form: str = "std"  # STEM_WS_FORMS; Google 'std' eps 1e-5, timm 'var' eps 1e-8
    stem_ws_eps: float = 1e-5
    stem_gn_eps: float = 1e-6  # GroupNorm epsilon; timm 1e-5
    # -- the families' options: each declared, with its default and description, in vit_jax/options.py --
    layer_scale: bool = option_default("layer_scale")
    layer_scale_init: float = 1e-5  # LayerScale's initial value (timm's init_values)
    distilled: bool = option_default("distilled")
    num_register_tokens: int = option_default("num_register_tokens")
    posemb_class_slot: bool = option_default("posemb_class_slot")
    pre_norm: bool = option_default("pre_norm")
    patch_bias: bool = option_default("patch_bias")
    head_bias: bool = option_default("head_bias")
    fc_norm: bool = option_default("fc_norm")
    mask_token: bool = option_default("mask_token")
    posemb_resize: str = "bilinear"  # the source's interpolation of the position grid to a new size (POSEMB_RESIZE)
    mlp_type: str = option_default("mlp_type")  # MLP_TYPES; mlp_dim is the width fc2 reads (the gated width)
    mlp_norm: bool = option_default("mlp_norm")
    key_bias: bool = option_default("key_bias")
    rope: bool = option_default("rope")
    rope_ref_grid: tuple[int, int] | None = None  # the grid rotary positions are scaled to (timm's ref_feat_shape)

    # -- runtime: how the function is computed, never what it is (RUNTIME_FIELDS) --
    # 'reference': plain Flax and JAX on every backend; 'cpu': the XLA:CPU forms
    # of vit_jax/cpu (same function, faster on CPU, reverse-mode autodiff only).
    kernels: str = "reference"
    # The attention core without probabilities: 'auto'/'xla'/'cudnn' through
    # jax.nn.dot_product_attention, 'explicit' einsum + softmax, 'recompute' the
    # CPU kernels' core. Probabilities or attention dropout use the explicit form.
    attention_impl: str = "auto"
    remat: bool = False  # rematerialise each block in the backward pass
    remat_policy: str = "nothing_saveable"  # what a rematerialised block keeps (REMAT_POLICIES)
    scan: bool = False  # nn.scan over blocks: stacked params, compile time flat in depth
    # kernels='cpu' only: the MLP's backward pass recomputes GELU's output
    # instead of keeping it (one MLP-width activation less per block); needs
    # dropout_rate 0. On accelerators, `remat` is the memory knob.
    recompute_gelu: bool = False

    def __post_init__(self):
        # JSON gives lists; keep tuples so the dataclass stays hashable.
        for field in ("image_size", "patch_size", "pixel_mean", "pixel_std", "resnet_layers", "rope_ref_grid"):
            value = getattr(self, field)
            if isinstance(value, list):
                object.__setattr__(self, field, tuple(value))
        self.validate()

    # -- derived geometry -------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return to_pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return to_pair(self.patch_size)

    @property
    def is_hybrid(self) -> bool:
        return self.resnet_layers is not None

    @property
    def stem_stride(self) -> int:
        """Downsampling of the ResNet stem: 4 for root conv + pool, x2 per stage after the first."""
        if not self.is_hybrid:
            return 1
        return 4 * 2 ** max(len(self.resnet_layers) - 1, 0)

    @property
    def stem_hw(self) -> tuple[int, int]:
        """Spatial size of the stem's output ('SAME' padding: ceil division at every stride)."""
        h, w = self.image_hw
        if not self.is_hybrid:
            return h, w
        for _ in range(2 + max(len(self.resnet_layers) - 1, 0)):
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    @property
    def stem_width(self) -> int:
        """Channels of the stem's output (what the patch embedding reads)."""
        if not self.is_hybrid:
            return self.num_channels
        width = int(64 * self.width_factor)
        return width if not self.resnet_layers else 4 * width * 2 ** (len(self.resnet_layers) - 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = self.stem_hw, self.patch_hw
        return h // ph, w // pw

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def has_class_token(self) -> bool:
        return self.classifier in ("token", "token_unpooled", "token_gap")

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation, registers (in that order)."""
        return (1 + self.distilled if self.has_class_token else 0) + self.num_register_tokens

    @property
    def posemb_prefix_tokens(self) -> int:
        """Prefix tokens with a position-embedding slot: class and distillation unless posemb_class_slot is off."""
        return (1 + self.distilled) * (self.has_class_token and self.posemb_class_slot)

    @property
    def posemb_len(self) -> int:
        return self.num_patches + self.posemb_prefix_tokens

    @property
    def final_norm(self) -> bool:
        """The encoder's norm over every token (Google's encoder_norm), unless fc_norm moves it after pooling."""
        return not self.fc_norm

    @property
    def seq_len(self) -> int:
        return self.num_patches + self.num_prefix_tokens

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_heads

    @property
    def inner_dim(self) -> int:
        """Width of q, k, v and of the attention output before its projection."""
        return self.num_heads * self.head_dim

    @property
    def features_dim(self) -> int:
        """Width of the representation fed to the head."""
        return self.representation_size or self.hidden_size

    def drop_path_rates(self) -> list[float]:
        """Per-block stochastic-depth rates, linear from 0 to the configured maximum."""
        n = self.num_layers
        if n == 1:
            return [self.stochastic_depth_rate]
        return [self.stochastic_depth_rate * i / (n - 1) for i in range(n)]

    def layer_names(self, attention: bool = False) -> list[str]:
        """Canonical intermediate names, in forward order, shared by both models."""
        names = (["stem"] if self.is_hybrid else []) + ["patch_embed", "embed"]
        names += ["norm_pre"] if self.pre_norm else []
        for i in range(self.num_layers):
            names += [f"blocks.{i}.rope"] if self.rope else []  # q and k after the rotation
            names += [f"blocks.{i}.attn_probs"] if attention else []
            names += [f"blocks.{i}.attn", f"blocks.{i}.mlp", f"blocks.{i}"]
        names += ["norm"] + (["pool.attn", "pool"] if self.classifier == "map" else []) + ["pre_logits"]
        return names + (["logits"] if self.num_classes else [])

    def check_image_shape(self, shape: tuple[int, ...], layout: str = "NHWC") -> None:
        """Raise a ValueError naming what is wrong with an image batch shape ('NHWC' or 'NCHW')."""
        shape = tuple(shape)
        names = {"NHWC": "(batch, height, width, channels)", "NCHW": "(batch, channels, height, width)"}
        if len(shape) != 4:
            raise ValueError(f"images must be {layout} {names[layout]}, got shape {shape}")
        if layout == "NHWC":
            (_, h, w, ch), other_channels = shape, shape[1]
        else:
            (_, ch, h, w), other_channels = shape, shape[3]
        if ch != self.num_channels:
            other = "NCHW" if layout == "NHWC" else "NHWC"
            raise ValueError(
                f"images have {ch} channels, config expects {self.num_channels} "
                f"(the model takes {layout}; {other} input would show channels = {other_channels})"
            )
        if (h, w) != self.image_hw:
            raise ValueError(
                f"image size {h}x{w} does not match config image size {self.image_hw[0]}x{self.image_hw[1]}; "
                f"build the config for the new size and resize the position embeddings (vit_jax.resize_params)"
            )

    # -- validation -------------------------------------------------------
    def validate(self) -> None:
        # In this order: a config with several faults gets the first one's message, and later checks
        # lean on earlier ones (head_dim needs num_heads > 0, the grid needs a valid stem).
        self._validate_sizes()
        self._validate_stem()
        self._validate_tokens_and_norms()
        self._validate_mlp_and_attention()
        self._validate_grid()
        self._validate_heads()
        self._validate_choices()
        self._validate_runtime()
        self._validate_head_and_dropout()
        self._validate_normalisation()

    def _check_positive_int(self, field: str) -> None:
        value = getattr(self, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field} must be a positive integer, got {value!r}")

    def _validate_sizes(self) -> None:
        """The widths, depth and class count, and positive image and patch sizes."""
        for field in ("num_channels", "hidden_size", "mlp_dim", "num_heads", "num_layers"):
            self._check_positive_int(field)
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0 (0 = features only), got {self.num_classes!r}")
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        if min(h, w, ph, pw) <= 0:
            raise ConfigError(f"image_size {self.image_size!r} and patch_size {self.patch_size!r} must be positive")

    def _validate_grid(self) -> None:
        """Patches tile the image, or the hybrid stem's feature map, exactly."""
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        (sh, sw) = self.stem_hw
        if sh % ph or sw % pw:
            if self.is_hybrid:
                raise ConfigError(
                    f"the ResNet stem's {sh}x{sw} output (image {h}x{w}, stride {self.stem_stride}) is not divisible "
                    f"by patch size {ph}x{pw}"
                )
            raise ConfigError(
                f"image size {h}x{w} is not divisible by patch size {ph}x{pw}"
            )

    def _validate_heads(self) -> None:
        """The split into heads, and the width an attention without output projection must keep."""
        if self.attention_head_dim is not None:
            self._check_positive_int("attention_head_dim")
        elif self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads} "
                f"(or set attention_head_dim)"
            )
        if not self.attention_out_proj and self.inner_dim != self.hidden_size:
            raise ConfigError(
                f"attention_out_proj=False needs num_heads x head_dim == hidden_size, got {self.num_heads} x "
                f"{self.head_dim} != {self.hidden_size}"
            )

    def _validate_choices(self) -> None:
        """Pooling, GELU form and position embedding are known names (sin-cos needs a width of 4k)."""
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier {self.classifier!r} is not one of {CLASSIFIERS}")
        if self.gelu not in GELU_FORMS:
            raise ConfigError(f"gelu {self.gelu!r} is not one of {GELU_FORMS}")
        if self.posemb not in POSEMB_KINDS:
            raise ConfigError(f"posemb {self.posemb!r} is not one of {POSEMB_KINDS}")
        if self.posemb == "sincos2d" and self.hidden_size % 4:
            raise ConfigError(
                f"posemb 'sincos2d' needs hidden_size divisible by 4, got {self.hidden_size}"
            )

    def _validate_runtime(self) -> None:
        """Kernels, attention implementation, rematerialisation and dtypes: how the function is computed."""
        if self.kernels not in KERNELS:
            raise ConfigError(f"kernels {self.kernels!r} is not one of {KERNELS}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
        if self.kernels != "cpu" and self.attention_impl == "recompute":
            raise ConfigError("attention_impl 'recompute' is a CPU kernel: set kernels='cpu' or another attention_impl")
        if self.kernels != "cpu" and self.recompute_gelu:
            raise ConfigError(
                "recompute_gelu is a CPU kernel option: set kernels='cpu', or use remat=True to save memory "
                "with the reference kernels"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ConfigError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
        for field in ("dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ConfigError(f"{field} {getattr(self, field)!r} is not one of {DTYPES}")

    def _validate_head_and_dropout(self) -> None:
        """The pre-logits width and the dropout rates (a recomputed GELU cannot keep a dropout mask)."""
        if self.representation_size is not None and (
            isinstance(self.representation_size, bool)
            or not isinstance(self.representation_size, int)
            or self.representation_size <= 0
        ):
            raise ConfigError(
                f"representation_size must be a positive integer or None, got {self.representation_size!r}"
            )
        for field in ("dropout_rate", "attention_dropout_rate", "stochastic_depth_rate"):
            rate = getattr(self, field)
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"{field} must be in [0, 1), got {rate!r}")
        if self.recompute_gelu and self.dropout_rate > 0:
            raise ConfigError(
                f"recompute_gelu needs dropout_rate 0, got {self.dropout_rate!r} (the dropout between the MLP's "
                "two layers would have to keep its mask; set recompute_gelu=False or dropout_rate=0)"
            )

    def _validate_normalisation(self) -> None:
        """The patch-embedding norm (not with a stem), LayerNorm epsilon and per-channel input statistics."""
        if self.patch_norm and self.resnet_layers is not None:
            raise ConfigError("patch_norm (vit-pytorch's patch embedding) and resnet_layers (a hybrid stem) "
                              "cannot be combined: no released model has both")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        for field in ("pixel_mean", "pixel_std"):
            value = getattr(self, field)
            if len(value) != self.num_channels:
                raise ConfigError(
                    f"{field} has {len(value)} values, expected one per channel ({self.num_channels})"
                )
        if any(s <= 0 for s in self.pixel_std):
            raise ConfigError(f"pixel_std must be > 0, got {self.pixel_std!r}")

    def _validate_tokens_and_norms(self) -> None:
        """The token and norm options (vit_jax/options.py) and what they need."""
        n = self.num_register_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"num_register_tokens must be an integer >= 0, got {n!r}")
        if self.distilled and self.classifier != "token":
            raise ConfigError(f"distilled needs classifier 'token' (the class and distillation heads), got "
                              f"{self.classifier!r}")
        if self.distilled and self.representation_size is not None:
            raise ConfigError("distilled with representation_size: the class and distillation heads read the tokens "
                              "directly")
        if self.fc_norm and self.classifier in ("unpooled", "token_unpooled"):
            raise ConfigError(f"fc_norm normalises the pooled features; classifier {self.classifier!r} pools nothing")
        if self.posemb_resize not in POSEMB_RESIZE:
            raise ConfigError(f"posemb_resize {self.posemb_resize!r} is not one of {POSEMB_RESIZE}")
        if self.gelu == "quick" and self.recompute_gelu:
            raise ConfigError("recompute_gelu computes the erf or tanh GELU; set recompute_gelu=False for gelu 'quick'")
        if (self.distilled or n) and (self.is_hybrid or self.patch_norm):
            raise ConfigError("distillation and register tokens are options of the plain ViT (no ResNet stem, no "
                              "patch_norm)")

    def _validate_mlp_and_attention(self) -> None:
        """The MAP head, the MLP forms, the rotary embedding and q/v-only biases, and what they need."""
        if self.mlp_type not in MLP_TYPES:
            raise ConfigError(f"mlp_type {self.mlp_type!r} is not one of {MLP_TYPES}")
        if self.mlp_norm and self.mlp_type != "swiglu":
            raise ConfigError(f"mlp_norm (a sub-LayerNorm over the gated units) needs mlp_type 'swiglu', got "
                              f"{self.mlp_type!r}")
        if self.mlp_type != "gelu" and self.recompute_gelu:
            raise ConfigError("recompute_gelu recomputes a GELU; a SwiGLU MLP has none (set recompute_gelu=False)")
        if self.classifier == "map" and (self.fc_norm or self.representation_size is not None or self.distilled):
            raise ConfigError("classifier 'map' pools with its own LayerNorm and MLP: no fc_norm, representation_size "
                              "or distillation token")
        if self.rope and self.head_dim % 4:
            raise ConfigError(f"rope needs a head width divisible by 4, got {self.head_dim}")
        grid = self.rope_ref_grid
        if grid is not None and (not isinstance(grid, tuple) or len(grid) != 2 or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
            raise ConfigError(f"rope_ref_grid must be None or two positive integers (rows, columns), got {grid!r}")

    def _validate_stem(self) -> None:
        if self.stem_ws_form not in STEM_WS_FORMS:
            raise ConfigError(f"stem_ws_form {self.stem_ws_form!r} is not one of {STEM_WS_FORMS}")
        for field in ("stem_ws_eps", "stem_gn_eps"):
            if not getattr(self, field) > 0:
                raise ConfigError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if not self.is_hybrid:
            return
        if not isinstance(self.resnet_layers, tuple) or any(
            isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in self.resnet_layers
        ):
            raise ConfigError(
                f"resnet_layers must be None (no stem) or a tuple of positive unit counts per stage, "
                f"got {self.resnet_layers!r}"
            )
        factor = self.width_factor
        width = int(64 * factor) if isinstance(factor, (int, float)) and not isinstance(factor, bool) else 0
        if width <= 0 or width % STEM_GROUPS:
            raise ConfigError(
                f"width_factor {self.width_factor!r} gives a root width of {width}; it must be a positive multiple "
                f"of the {STEM_GROUPS} GroupNorm groups"
            )

    # -- (de)serialisation ------------------------------------------------
    def replace(self, **overrides: Any) -> "ViTConfig":
        _check_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def function_dict(self) -> dict[str, Any]:
        """The fields that define the function (all but RUNTIME_FIELDS)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTConfig":
        _check_fields(data)
        return cls(**data)

    @classmethod
    def from_json(cls, path: str) -> "ViTConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def unknown_field_hints(cls: type, values: dict[str, Any]) -> list[str]:
    """Keys of `values` that are not fields of dataclass `cls`, each with a close match if any."""
    known = {f.name for f in dataclasses.fields(cls)}
    hints = []
    for key in sorted(set(values) - known):
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return hints


def parse_assignment(text: str) -> tuple[str, Any]:
    """A command line's `FIELD=VALUE` (`--set`): the value as JSON, else the bare string (gelu=exact)."""
    if "=" not in text:
        raise ConfigError(f"--set expects FIELD=VALUE, got {text!r}")
    field, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return field.strip(), tuple(value) if isinstance(value, list) else value


def _check_fields(values: dict[str, Any]) -> None:
    hints = unknown_field_hints(ViTConfig, values)
    if hints:
        raise ConfigError(f"unknown config field(s): {', '.join(hints)}")


# hidden, mlp, heads, layers (docs/design.md, "Presets")
_WIDTHS = {
    "Ti": (192, 768, 3, 12),
    "S": (384, 1536, 6, 12),
    "B": (768, 3072, 12, 12),
    "L": (1024, 4096, 16, 24),
    "H": (1280, 5120, 16, 32),
    # "Scaling Vision Transformers" (Zhai et al. 2022), as timm's vit_giant/vit_gigantic_patch14_224
    "g": (1408, 6144, 16, 40),
    "G": (1664, 8192, 16, 48),
}
_OFFICIAL = ("Ti_16", "S_16", "S_32", "B_16", "B_32", "B_8", "L_16", "L_32", "H_14")
# Presets for models larger than one device holds (sharded training, docs/training.md); no Google release.
_GIANT = ("g_14", "G_14")


def _preset(variant: str, patch: int) -> ViTConfig:
    hidden, mlp, heads, layers = _WIDTHS[variant]
    return ViTConfig(
        name=f"ViT-{variant}_{patch}",
        patch_size=patch,
        hidden_size=hidden,
        mlp_dim=mlp,
        num_heads=heads,
        num_layers=layers,
    )


PRESETS: dict[str, ViTConfig] = {}
for _name in _OFFICIAL + _GIANT:
    _variant, _patch = _name.split("_")
    PRESETS[f"ViT-{_name}"] = _preset(_variant, int(_patch))
# Google's hybrids: the ResNet stem's output cut into 1x1 patches (8x8 for the stem-only Ti).
# R26+ViT-S_32 takes the S_16 transformer, as Google's config does.
_HYBRIDS = {
    "R+ViT-Ti_16": ("Ti", 8, ()),
    "R26+ViT-S_32": ("S", 1, (2, 2, 2, 2)),
    "R26+ViT-B_32": ("B", 1, (2, 2, 2, 2)),
    "R50+ViT-B_16": ("B", 1, (3, 4, 9)),
    "R50+ViT-L_32": ("L", 1, (3, 4, 6, 3)),
}
for _name, (_variant, _patch, _layers) in _HYBRIDS.items():
    PRESETS[_name] = _preset(_variant, _patch).replace(name=_name, resnet_layers=_layers)
# The families' presets (vit_jax/families): each the plain ViT with its options and numerics; parameter
# counts equal timm's model of the architecture the family names for the preset.
for _family in FAMILIES:
    for _name, _fields in _family.presets.items():
        _fields = dict(_fields)
        _base = _preset(_fields.pop("variant"), _fields.pop("patch")) if "variant" in _fields else ViTConfig()
        PRESETS[_name] = _base.replace(name=_name, **_fields)
# Tiny model for tests and quick experiments.
PRESETS["ViT-testing"] = ViTConfig(
    name="ViT-testing",
    image_size=16,
    patch_size=4,
    num_classes=10,
    hidden_size=32,
    mlp_dim=64,
    num_heads=2,
    num_layers=2,
)

_SHORT_NAME = re.compile(r"^(?:ViT-)?(Ti|S|B|L|H|g|G)[/_](\d+)$")


def list_presets() -> list[str]:
    return list(PRESETS)


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """A preset by name ('ViT-B_16', or the short 'B/16'), with field overrides.

    Any variant/patch combination is accepted in short form ('S/8'); the
    official names are the ones Google released weights for.
    """
    if name in PRESETS:
        config = PRESETS[name]
    else:
        match = _SHORT_NAME.match(name)
        if not match:
            close = difflib.get_close_matches(name, list(PRESETS), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} "
                f"(or a short name such as 'B/16').{hint}"
            )
        config = _preset(match.group(1), int(match.group(2)))
    return config.replace(**overrides) if overrides else config
