"""Declarative key renames between timm's naming and another PyTorch naming (HF, torchvision).

A table is a list of `(timm pattern, other pattern(s))`. `{i}` stands for a
block index and `{p}` for `weight` or `bias`. Several other-side patterns mean
the timm tensor is their concatenation along dim 0 (timm's fused qkv against
separate query/key/value), in the order given. Renames, concatenation and
even splits move bytes without arithmetic, so conversions through a table are
bit-exact both ways.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from vit_jax.formats.base import TIMM, ConversionError, TensorSource

_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)"}


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for field, group in _FIELDS.items():
        regex = regex.replace(re.escape("{" + field + "}"), group)
    return re.compile(f"^{regex}$")




class RenameTable:
    def __init__(self, entries: Sequence[tuple[str, str | tuple[str, ...]]]):
        self._entries = []
        for timm_pattern, other in entries:
            others = (other,) if isinstance(other, str) else tuple(other)
            self._entries.append((timm_pattern, _compile(timm_pattern), others, [_compile(o) for o in others]))

    def to_other(self, timm_key: str) -> tuple[str, ...] | None:
        """Name(s) a timm key has on the other side, or None if the table does not cover it."""
        for _, regex, others, _ in self._entries:
            match = regex.match(timm_key)
            if match:
                return tuple(o.format(**match.groupdict()) for o in others)
        return None

    def to_timm(self, other_key: str) -> tuple[str, int, int] | None:
        """(timm key, part index, number of parts) of a key on the other side, or None."""
        for timm_pattern, _, others, regexes in self._entries:
            for part, regex in enumerate(regexes):
                match = regex.match(other_key)
                if match:
                    return timm_pattern.format(**match.groupdict()), part, len(others)
        return None

    def rename_to_other(self, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """timm-named tensors -> the other naming (fused tensors split in equal parts along dim 0)."""
        out = {}
        for key, value in tensors.items():
            names = self.to_other(key)
            if names is None:
                raise ConversionError(f"tensor {key!r} has no counterpart in this naming")
            if len(names) == 1:
                out[names[0]] = value
            else:
                for name, part in zip(names, np.split(np.asarray(value), len(names), axis=0)):
                    out[name] = np.ascontiguousarray(part)
        return out

    def source_as_timm(self, source: TensorSource, what: str) -> TensorSource:
        """A lazy view of `source` (in this table's other naming) under timm keys."""
        parts: dict[str, list[str | None]] = {}
        for key in source.shapes:
            found = self.to_timm(key)
            if found is None:
                raise ConversionError(
                    f"{source.path}: unexpected tensor {source.file_name(key)!r}: not part of the {what} ViT naming "
                    f"(expected names such as {self._entries[0][2][0]!r})"
                )
            timm_key, part, count = found
            parts.setdefault(timm_key, [None] * count)[part] = key
        shapes, names = {}, {}
        for timm_key, keys in parts.items():
            if None in keys:
                expected = self.to_other(timm_key)
                missing = [e for e, k in zip(expected, keys) if k is None]
                raise ConversionError(
                    f"{source.path}: missing tensor {missing[0]!r} (needed with "
                    f"{[source.file_name(k) for k in keys if k]} "
                    f"to form {timm_key!r})"
                )
            part_shapes = [source.shapes[k] for k in keys]
            if len({s[1:] for s in part_shapes}) > 1 or len({s[:1] for s in part_shapes}) > 1:
                raise ConversionError(
                    f"{source.path}: tensors {keys} should have equal shapes to form {timm_key!r}, "
                    f"got {part_shapes}"
                )
            first = part_shapes[0]
            shapes[timm_key] = first if len(keys) == 1 else (first[0] * len(keys), *first[1:])
            names[timm_key] = " + ".join(source.file_name(k) for k in keys)

        def load(timm_key: str) -> np.ndarray:
            keys = parts[timm_key]
            if len(keys) == 1:
                return source.load(keys[0])
            return np.concatenate([source.load(k) for k in keys], axis=0)

        return TensorSource(
            path=source.path,
            format=source.format,
            naming=TIMM,
            shapes=shapes,
            loader=load,
            names=names,
            stated=source.stated,
            numerics=source.numerics,
            notes=source.notes,
            default_head_dim=source.default_head_dim,
        )
