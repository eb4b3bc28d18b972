"""lucidrains' vit-pytorch `ViT` (`vit_pytorch.ViT`, the ViT of the tutorials) state dicts, as renames of timm's.

Its architecture is this project's with `patch_norm=True` (LayerNorm, Linear,
LayerNorm over (p1 p2 c)-flattened patches), `qkv_bias=False`, its `dim_head`
as `attention_head_dim`, no output projection when `heads == 1 and dim_head ==
dim`, pool 'cls' / 'mean' as classifier 'token' / 'gap', and with
`num_classes=0` every token returned ('token_unpooled' / 'unpooled'). The file
does not store the heads: `convert --set num_heads=N` (else q/k/v width / 64,
the package's default `dim_head`).

Beyond renames: `cls_token` is (1, D), or (0, D) without a class token, and
`pos_embedding` is (tokens, D), both without timm's batch axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vit_jax.formats.base import ConversionError, TensorSource, family_option_problems
from vit_jax.formats.renames import RenameTable
from vit_jax.formats.torch_sd import read_file, write_file

FORMAT = "vit-pytorch"
# nn.GELU() (exact) and nn.LayerNorm's default eps; the package says nothing of input normalisation.
NUMERICS = {"gelu": "exact", "layer_norm_eps": 1e-5}
DEFAULT_HEAD_DIM = 64  # vit_pytorch.ViT(dim_head=64)

_LAYER = "transformer.layers.{i}"
TABLE = RenameTable([
    ("patch_embed.norm_in.{p}", "to_patch_embedding.1.{p}"),
    ("patch_embed.proj.{p}", "to_patch_embedding.2.{p}"),
    ("patch_embed.norm_out.{p}", "to_patch_embedding.3.{p}"),
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embedding"),
    ("blocks.{i}.norm1.{p}", f"{_LAYER}.0.norm.{{p}}"),
    ("blocks.{i}.attn.qkv.weight", f"{_LAYER}.0.to_qkv.weight"),  # (3 inner, D), chunked q;k;v like timm
    ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.0.to_out.0.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_LAYER}.1.net.0.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.1.net.1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.1.net.4.{{p}}"),
    ("norm.{p}", "transformer.norm.{p}"),
    ("head.{p}", "mlp_head.{p}"),
])
# Tensors stored without timm's leading batch axis.
_UNBATCHED = ("cls_token", "pos_embed")


def vit_kwargs(config) -> dict:
    """The `vit_pytorch.ViT(...)` arguments of `config` (dropout aside), for a model that loads the written file."""
    check_expressible(config)
    size = lambda v: v if isinstance(v, int) else tuple(v)  # noqa: E731
    return dict(image_size=size(config.image_size), patch_size=size(config.patch_size),
                num_classes=config.num_classes, dim=config.hidden_size, depth=config.num_layers,
                heads=config.num_heads, mlp_dim=config.mlp_dim, channels=config.num_channels,
                dim_head=config.head_dim, pool="cls" if config.has_class_token else "mean")


def check_expressible(config) -> None:
    """vit_pytorch.ViT has one architecture with a few knobs; refuse a config it cannot compute."""
    problems = []
    if not config.patch_norm:
        problems.append("patch_norm=False (vit-pytorch's patch embedding is LayerNorm, Linear, LayerNorm)")
    if config.qkv_bias:
        problems.append("qkv_bias=True (vit-pytorch's to_qkv has no bias)")
    identity = config.num_heads == 1 and config.head_dim == config.hidden_size
    if config.attention_out_proj == identity:
        problems.append(f"attention_out_proj={config.attention_out_proj} (vit-pytorch projects the attention output "
                        f"unless heads == 1 and dim_head == dim)")
    if config.posemb != "learn":
        problems.append(f"posemb {config.posemb!r} (vit-pytorch learns its position embeddings)")
    if config.representation_size is not None:
        problems.append("representation_size (vit-pytorch has no pre-logits layer)")
    wanted = ("token", "gap") if config.num_classes else ("token_unpooled", "unpooled")
    if config.classifier not in wanted:
        problems.append(f"classifier {config.classifier!r} with {config.num_classes} classes (vit-pytorch: "
                        f"{' or '.join(map(repr, wanted))})")
    if config.gelu != "exact" or config.layer_norm_eps != NUMERICS["layer_norm_eps"]:
        problems.append(f"gelu {config.gelu!r}, layer_norm_eps {config.layer_norm_eps:g} (vit-pytorch computes "
                        f"exact GELU, eps 1e-5)")
    problems += family_option_problems(config, "vit-pytorch", FORMAT)
    if problems:
        raise ConversionError(f"vit-pytorch's ViT cannot express this model: {'; '.join(problems)}")


def read(path: str | Path) -> TensorSource:
    source = TABLE.source_as_timm(read_file(path, FORMAT, "vit-pytorch", NUMERICS), "vit-pytorch")
    source.default_head_dim = DEFAULT_HEAD_DIM
    inner_load = source.loader
    if source.shapes.get("cls_token", (None,))[0] == 0:  # pool='mean': an empty class token, no such tensor here
        del source.shapes["cls_token"]
    for key in _UNBATCHED:
        if key in source.shapes:
            if len(source.shapes[key]) != 2:
                raise ConversionError(f"{path}: tensor {source.file_name(key)!r} has shape {source.shapes[key]}, "
                                      f"expected (tokens, dim) as vit_pytorch.ViT stores it")
            source.shapes[key] = (1, *source.shapes[key])
    source.loader = lambda key: inner_load(key)[None] if key in _UNBATCHED else inner_load(key)
    if "head.weight" not in source.shapes:  # num_classes=0: vit_pytorch.ViT returns every token
        source.stated = {**source.stated,
                         "classifier": "token_unpooled" if "cls_token" in source.shapes else "unpooled"}
    return source


def write(path: str | Path, tensors: dict[str, np.ndarray], config, like: str | Path) -> None:
    check_expressible(config)
    for key in _UNBATCHED:
        if key in tensors:
            tensors[key] = tensors[key][0]
    if "cls_token" not in tensors:  # vit_pytorch.ViT(pool='mean') holds a (0, dim) class token
        tensors["cls_token"] = np.zeros((0, config.hidden_size), tensors["pos_embed"].dtype)
    write_file(path, TABLE.rename_to_other(tensors), like)
