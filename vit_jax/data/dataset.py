"""DatasetSpec -> Dataset: which data, how it is split, and what it holds."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from vit_jax.data.cifar import load_cifar_records
from vit_jax.data.decode import check_channels
from vit_jax.data.digits import load_digits_records
from vit_jax.data.errors import DataError
from vit_jax.data.folder import load_folder_records
from vit_jax.data.npz import load_npz_records
from vit_jax.data.records import RecordSource

KINDS = ("digits", "folder", "cifar10", "cifar100", "npz")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Where the data is and how to split it.

    kind: 'digits' (scikit-learn's bundled 8x8 digits, no path), 'folder'
    (root/<class>/<image>, with train/ and val/ subfolders or split by
    fraction), 'cifar10'/'cifar100' (the python-pickle directory), 'npz'
    (arrays `images` and `labels`). val_path: a separate eval folder or npz;
    without one, split_fraction of every class goes to eval, drawn with
    split_seed. channels: 1 (grey) or 3 (RGB); sources are converted.
    """

    kind: str = "digits"
    path: str | None = None
    val_path: str | None = None
    split_fraction: float = 0.2
    split_seed: int = 0
    channels: int = 3

    def __post_init__(self):
        for name in ("path", "val_path"):  # accept pathlib paths; keep the spec JSON-ready
            if getattr(self, name) is not None:
                object.__setattr__(self, name, os.fspath(getattr(self, name)))
        if self.kind not in KINDS:
            raise DataError(f"unknown dataset kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        check_channels(self.channels)
        if not 0.0 < self.split_fraction < 1.0:
            raise DataError(f"split_fraction must be in (0, 1), got {self.split_fraction!r}")
        if self.kind == "digits" and (self.path or self.val_path):
            raise DataError("the digits dataset is bundled with scikit-learn and takes no path")
        if self.kind != "digits" and not self.path:
            raise DataError(f"dataset kind {self.kind!r} needs a path")
        if self.kind.startswith("cifar") and self.val_path:
            raise DataError(f"{self.kind} comes with its own test split; val_path is not used for it")


@dataclasses.dataclass
class Dataset:
    """Train and eval record sources plus what a run config should record about them."""

    train: RecordSource
    eval: RecordSource
    num_classes: int
    class_names: list[str]
    info: dict[str, Any]


def load_dataset(spec: DatasetSpec) -> Dataset:
    """Load (or index, for image folders) the data that `spec` names."""
    if spec.kind == "digits":
        train, eval_, class_names, extra = load_digits_records(spec.split_fraction, spec.split_seed, spec.channels)
    elif spec.kind == "folder":
        train, eval_, class_names, extra = load_folder_records(
            spec.path, spec.val_path, spec.split_fraction, spec.split_seed, spec.channels
        )
    elif spec.kind == "npz":
        train, eval_, class_names, extra = load_npz_records(
            spec.path, spec.val_path, spec.split_fraction, spec.split_seed, spec.channels
        )
    else:
        train, eval_, class_names, extra = load_cifar_records(spec.path, spec.kind, spec.channels)
    info = {
        **dataclasses.asdict(spec),
        **extra,
        "num_train": len(train),
        "num_eval": len(eval_),
        "num_classes": len(class_names),
        "class_names": class_names,
    }
    if info["split"] == "given":
        info.pop("split_fraction")
        info.pop("split_seed")
    return Dataset(train=train, eval=eval_, num_classes=len(class_names), class_names=class_names, info=info)
