"""A checkpoint's Flax parameters as a read-only mapping that reads each tensor from the file when it is asked for.

    config, params = open_flax_params_lazy("ViT-L_16.safetensors")      # index, config, one checking pass
    kernel = params["Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel"]   # reads blocks.3.mlp.fc1.weight

For code that uses the model one part at a time (the parity report runs it a block at a time): the mapping
holds one mapping rule's tensors (a fused qkv gives three Flax paths), never the model. Keys are
the per-block Flax '/'-paths of `vit_jax.formats.mapping.param_rules`, the values the same arrays
`read_flax_params` gives (flattened per block), cast to `dtype`.

How each format streams (the file layer is the same as `load_pretrained`'s):
- `.safetensors` (timm, timm hub, Hugging Face, torchvision, vit-pytorch namings): one tensor per
  read, with plain file reads (no mmap, so pages read do not stay in the process's resident set).
- Google `.npz`: one zip member per read; one layer of a scanned (stacked) member is read on its
  own when the member is stored uncompressed (as `np.savez` writes).
- orbax directories: one array, or one layer of a scanned array, per read (tensorstore).
- `.pt/.pth/.bin`: `torch.load(mmap=True)`: tensors are paged in from the file as they are read,
  but the pages read stay mapped, so the resident set grows towards the file's size (page cache the
  kernel can reclaim, not a copy in memory).
- Flax `.msgpack` and train.py run directories do not stream: msgpack has no index, so the file is
  decoded whole when opened, and a run's step is read whole to check it is intact. The mapping
  then holds that one copy (in the file's dtype), and still makes no other.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Mapping

import numpy as np
from numpy.typing import DTypeLike

from vit_jax.config import ViTConfig
from vit_jax.formats.base import FLAX, TensorSource
from vit_jax.formats.mapping import Rule, param_rules
from vit_jax.formats.read import load_checked, open_checkpoint, rule_tensors, source_keys


class LazyFlatParams(Mapping[str, np.ndarray]):
    """{per-block Flax '/'-path: array} over a checkpoint; each lookup reads its rule's source tensors.

    Each tensor read is checked as `read_flax_params` checks it (floating point, finite unless
    `allow_nonfinite`: a ConversionError names it). The last rule's arrays are kept (read-only) so
    that the other paths of a fused tensor do not read it again; nothing else is.
    """

    def __init__(self, source: TensorSource, config: ViTConfig, dtype: DTypeLike | None = np.float32,
                 allow_nonfinite: bool = False):
        self.source, self.config, self.dtype, self.allow_nonfinite = source, config, dtype, allow_nonfinite
        self.rule_list = param_rules(config)
        self.rules = {path: rule for rule in self.rule_list for path in rule.flax}
        self._held: tuple[Rule, dict[str, np.ndarray]] | None = None

    def __getitem__(self, path: str) -> np.ndarray:
        rule = self.rules[path]
        if self._held is None or self._held[0] is not rule:
            self._held = None  # let the previous rule's arrays go before reading the next
            self._held = rule, {key: self._read_only(value) for key, value in
                                rule_tensors(self.source, rule, self.config, FLAX, self._load).items()}
        return self._held[1][path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __contains__(self, path: object) -> bool:  # Mapping's would read the tensor to find out
        return path in self.rules

    def _load(self, key: str) -> np.ndarray:
        return load_checked(self.source, key, self.allow_nonfinite)

    def _read_only(self, array: np.ndarray) -> np.ndarray:
        view = np.asarray(array, self.dtype).view()  # a view: the source's own array keeps its flags
        view.flags.writeable = False
        return view

    def check_all(self) -> None:
        """Read every tensor the model needs once, keeping none: a bad one is refused now, not midway."""
        done: set[str] = set()
        for rule in self.rule_list:
            for key in source_keys(self.source, rule):
                if key not in done:
                    self._load(key)
                    done.add(key)


def open_flax_params_lazy(
    path: str | os.PathLike,
    format: str | None = None,
    config: ViTConfig | str | os.PathLike | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
    dtype: DTypeLike | None = np.float32,
    check: bool = True,
) -> tuple[ViTConfig, LazyFlatParams]:
    """(config, lazy per-block Flax params) of the checkpoint at `path`, as `load_pretrained` reads it.

    The config is worked out as `load_pretrained` does (`config`, `overrides`, `step`, `format`
    mean the same); there is no resizing or fresh head (`load_pretrained` does those). `dtype`
    None keeps each tensor's dtype in the file. `check` reads every tensor once now (and drops it),
    so that a non-float or non-finite one is refused here rather than at its first use.
    """
    resolved, source = open_checkpoint(path, format, config, step, overrides=overrides)
    params = LazyFlatParams(source, resolved, dtype, allow_nonfinite)
    if check:
        params.check_all()
    return resolved, params
