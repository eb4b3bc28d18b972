"""A caller's own data for `vit_jax.training.train`: (images, labels) arrays, or record sources, as a Dataset.

Arrays become ArrayRecords (uint8 in [0, 255] or floats in [0, 1], (N, H, W)
or (N, H, W, C)); any other object must be a record source the loader reads:
`len`, `[index] -> (pixels, label)`, and the attributes `num_classes`,
`channels`, `defaults` and `what` (ArrayRecords and FileRecords have them).
Without eval data, a stratified `split_fraction` of the training data is held out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax.data import ArrayRecords, DataError, Dataset
from vit_jax.data.split import stratified_split
from vit_jax.training.config import IN_MEMORY_KIND

SOURCE_ATTRIBUTES = ("num_classes", "channels", "defaults", "what")


def _is_pair(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) == 2


def _class_count(*pairs: tuple[Any, Any] | None) -> int:
    """One more than the largest label of every array pair (labels are 0..C-1)."""
    highest = -1
    for pair in pairs:
        if pair is not None:
            labels = np.asarray(pair[1])
            if labels.size and np.issubdtype(labels.dtype, np.number):
                highest = max(highest, int(np.max(labels)))
    return max(highest + 1, 1)


def _from_arrays(pair: tuple[Any, Any], what: str, num_classes: int, channels: int) -> ArrayRecords:
    images, labels = pair
    return ArrayRecords(np.asarray(images), np.asarray(labels), num_classes=num_classes, channels=channels, what=what)


def _check_source(source: Any, what: str) -> Any:
    missing = [name for name in SOURCE_ATTRIBUTES if not hasattr(source, name)]
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")) or missing:
        lacks = f" (it has no {', '.join(missing)})" if missing else ""
        raise DataError(f"{what}: expected an (images, labels) pair of arrays or a record source with len(), "
                        f"[index] and {', '.join(SOURCE_ATTRIBUTES)}, got {type(source).__name__}{lacks}")
    return source


def in_memory_dataset(train_data: Any, eval_data: Any, channels: int, split_fraction: float,
                      split_seed: int) -> Dataset:
    """The Dataset of `train_data` and `eval_data` (None: a held-out split of `train_data`)."""
    pairs = [d if _is_pair(d) else None for d in (train_data, eval_data)]
    num_classes = _class_count(*pairs)
    if not _is_pair(train_data):
        num_classes = _check_source(train_data, "train_data").num_classes
    train = _from_arrays(train_data, "train_data", num_classes, channels) if pairs[0] else train_data
    if eval_data is None:
        if not hasattr(train, "subset") or not hasattr(train, "labels"):
            raise DataError("eval_data is needed with a train_data source that has no subset() and labels to split")
        train_idx, eval_idx = stratified_split(train.labels, split_fraction, split_seed)
        train, eval_ = train.subset(train_idx), train.subset(eval_idx)
        split = {"split": "fraction", "split_fraction": split_fraction, "split_seed": split_seed}
    else:
        eval_ = (_from_arrays(eval_data, "eval_data", num_classes, channels) if pairs[1]
                 else _check_source(eval_data, "eval_data"))
        split = {"split": "given"}
    if eval_.num_classes > num_classes:
        raise DataError(f"eval_data has {eval_.num_classes} classes, train_data {num_classes}; expected the same")
    class_names = [str(c) for c in range(num_classes)]
    info = {"kind": IN_MEMORY_KIND, "source": "in-memory data", "channels": channels, **split, "num_train": len(train),
            "num_eval": len(eval_), "num_classes": num_classes, "class_names": class_names}
    return Dataset(train=train, eval=eval_, num_classes=num_classes, class_names=class_names, info=info)
