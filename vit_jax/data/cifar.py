"""CIFAR-10 and CIFAR-100 from the python-pickle directories the authors distribute."""

from __future__ import annotations

import os
import pickle

import numpy as np

from vit_jax.data.errors import DataError
from vit_jax.data.records import ARRAY_DEFAULTS, ArrayRecords

# Per variant: the directory name inside the tarball, train files, test files,
# the metadata file, its class-name key, and the label key of each batch.
LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        b"label_names",
        b"labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_label_names", b"fine_labels"),
}

# The pickles hold dicts of bytes, lists and numpy arrays; refusing every other
# global means a planted file cannot run code when loaded.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR files hold only arrays and lists")


def _read_pickle(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"CIFAR file '{path}' is missing")
    try:
        with open(path, "rb") as f:
            content = _DataOnlyUnpickler(f, encoding="bytes").load()
    except Exception as error:  # any failure to unpickle means the file is unusable
        raise DataError(f"cannot read CIFAR file '{path}': {type(error).__name__}: {error}") from error
    if not isinstance(content, dict):
        raise DataError(f"CIFAR file '{path}' holds a {type(content).__name__}, expected a dict")
    return content


def _read_batches(directory: str, names: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = os.path.join(directory, name)
        batch = _read_pickle(path)
        for key in (b"data", label_key):
            if key not in batch:
                raise DataError(f"CIFAR file '{path}' has no {key!r} entry; found {sorted(batch)}")
        data = np.asarray(batch[b"data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
            raise DataError(f"CIFAR file '{path}': b'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
        batch_labels = np.asarray(batch[label_key])
        if len(batch_labels) != len(data):
            raise DataError(f"CIFAR file '{path}': {len(data)} images but {len(batch_labels)} labels")
        # Rows are the red, green and blue 32x32 planes, each row-major.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def find_cifar_dir(path: str, kind: str) -> str:
    """`path` itself, or the tarball's directory inside it."""
    subdir, train_files = LAYOUTS[kind][0], LAYOUTS[kind][1]
    if not os.path.isdir(path):
        raise DataError(f"CIFAR directory '{path}' does not exist")
    if not os.path.exists(os.path.join(path, train_files[0])) and os.path.isdir(os.path.join(path, subdir)):
        return os.path.join(path, subdir)
    return path


def load_cifar_records(path: str, kind: str, channels: int) -> tuple[ArrayRecords, ArrayRecords, list[str], dict]:
    """(train, eval, class_names, info) with the official train/test split."""
    directory = find_cifar_dir(path, kind)
    _, train_files, test_files, meta_file, names_key, label_key = LAYOUTS[kind]
    expected = train_files + test_files + [meta_file]
    missing = [f for f in expected if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise DataError(f"CIFAR directory '{directory}' lacks {missing}; a {kind} directory holds {expected}")
    meta_path = os.path.join(directory, meta_file)
    meta = _read_pickle(meta_path)
    if names_key not in meta:
        raise DataError(f"CIFAR metadata '{meta_path}' has no {names_key!r} entry; found {sorted(meta)}")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]

    def records(names):
        images, labels = _read_batches(directory, names, label_key)
        what = f"{kind} {', '.join(names)} in '{directory}'"
        return ArrayRecords(
            images, labels, num_classes=len(class_names), channels=channels, what=what, defaults=ARRAY_DEFAULTS
        )

    info = {"directory": directory, "split": "given", "image_shape": [32, 32, 3]}
    return records(train_files), records(test_files), class_names, info
