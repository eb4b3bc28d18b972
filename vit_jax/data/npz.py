"""NumPy archives: `images` (N, H, W[, C]) uint8 or float in [0, 1], `labels` (N,)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from vit_jax.data.errors import DataError
from vit_jax.data.records import ARRAY_DEFAULTS, ArrayRecords
from vit_jax.data.split import stratified_split


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays in `path`; an optional `class_names` array names the classes."""
    if not os.path.isfile(path):
        raise DataError(f"npz file '{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"cannot read npz file '{path}': {type(error).__name__}: {error}") from error
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise DataError(f"npz file '{path}' lacks {missing}; expected arrays 'images' and 'labels', found "
                        f"{sorted(arrays)}")
    return arrays


def _class_names(arrays: dict[str, np.ndarray], label_arrays: list[np.ndarray], path: str) -> list[str]:
    if "class_names" in arrays:
        return [str(n) for n in arrays["class_names"]]
    non_empty = [labels for labels in label_arrays if len(labels)]
    if not non_empty:
        raise DataError(f"npz file '{path}' has no examples (empty 'labels')")
    top = max(int(np.max(labels)) for labels in non_empty)
    if top < 0:
        raise DataError(f"npz file '{path}': labels must be non-negative class indices, found max {top}")
    return [str(i) for i in range(top + 1)]


def load_npz_records(
    path: str, val_path: str | None, eval_fraction: float, split_seed: int, channels: int
) -> tuple[ArrayRecords, ArrayRecords, list[str], dict]:
    """(train, eval, class_names, info): eval from `val_path`, or a stratified split of `path`."""
    train_arrays = read_npz(path)
    eval_arrays = read_npz(val_path) if val_path else None
    label_arrays = [train_arrays["labels"]] + ([eval_arrays["labels"]] if eval_arrays else [])
    for labels, where in zip(label_arrays, [path, val_path]):
        if not np.issubdtype(np.asarray(labels).dtype, np.number):
            raise DataError(f"npz file '{where}': labels must be numeric class indices, got dtype {labels.dtype}")
    class_names = _class_names(train_arrays, label_arrays, path)

    def records(arrays, where):
        return ArrayRecords(
            arrays["images"],
            arrays["labels"],
            num_classes=len(class_names),
            channels=channels,
            what=f"npz file '{where}'",
            defaults=ARRAY_DEFAULTS,
        )

    train = records(train_arrays, path)
    info = {"image_shape": list(train_arrays["images"].shape[1:])}
    if eval_arrays is not None:
        info["split"] = "given"
        return train, records(eval_arrays, val_path), class_names, info
    train_idx, eval_idx = stratified_split(train.labels, eval_fraction, split_seed)
    info["split"] = "fraction"
    return train.subset(train_idx), train.subset(eval_idx), class_names, info
