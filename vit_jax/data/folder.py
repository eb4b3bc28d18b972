"""Image folders: root/<class>/<image files>, split by subfolders or by fraction.

Symbolic links are followed, except a directory link that leads back into the
dataset root (or above it) or to a directory already walked: those would loop
or count the same images twice, under another class. Special files with an
image extension (FIFOs, sockets, devices) are skipped with a warning and never
opened; a broken file link is kept and later skipped like a corrupt image.
"""

from __future__ import annotations

import logging
import os
import stat

import numpy as np

from vit_jax.data.decode import IMAGE_EXTENSIONS, file_kind
from vit_jax.data.errors import DataError
from vit_jax.data.records import FileRecords
from vit_jax.data.split import stratified_split

log = logging.getLogger(__name__)


def _class_dirs(root: str) -> list[str]:
    if not os.path.exists(root):
        raise DataError(f"image folder '{root}' does not exist; expected root/<class>/<images>")
    if not os.path.isdir(root):
        raise DataError(f"'{root}' is not a directory; expected an image folder root/<class>/<images>")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"image folder '{root}' has no class subfolders; expected root/<class>/<images>")
    return names


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _image_files(class_dir: str, root: str, walked: set[str]) -> list[str]:
    """Image files under one class folder (recursively), in a stable order.

    `walked` holds the real paths of directories already indexed (all classes).
    """
    found = []
    real_root = os.path.realpath(root)
    walked.add(os.path.realpath(class_dir))
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        kept = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            full = os.path.join(dirpath, name)
            real = os.path.realpath(full)
            if os.path.islink(full) and (_inside(real, real_root) or _inside(real_root, real) or real in walked):
                log.warning("skipping directory link '%s' -> '%s': it leads back into the dataset or to a "
                            "directory already indexed", full, real)
                continue
            if real in walked:
                continue
            walked.add(real)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            full = os.path.join(dirpath, name)
            try:
                mode = os.stat(full).st_mode
            except OSError:  # a broken link: kept, and skipped like a corrupt image when read
                found.append(full)
                continue
            if not stat.S_ISREG(mode):
                log.warning("skipping '%s': it is %s, not an image file", full, file_kind(mode))
                continue
            found.append(full)
    return found


def index_folder(root: str, class_names: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, class_names) for root/<class>/...; labels follow sorted class names.

    With `class_names` (from the train folder), the folder's classes must be
    among them, so a val folder cannot silently renumber the labels.
    """
    found = _class_dirs(root)
    if class_names is None:
        class_names = found
    else:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise DataError(
                f"image folder '{root}' has class folders {unknown} that the training folder does not have "
                f"(training classes: {class_names})"
            )
    paths, labels = [], []
    walked: set[str] = set()
    for name in found:
        files = _image_files(os.path.join(root, name), root, walked)
        if not files:
            raise DataError(
                f"class folder '{os.path.join(root, name)}' has no image files; expected files ending in "
                f"{', '.join(IMAGE_EXTENSIONS)}"
            )
        paths.extend(files)
        labels.extend([class_names.index(name)] * len(files))
    return paths, np.asarray(labels, np.int32), class_names


def load_folder_records(
    path: str, val_path: str | None, eval_fraction: float, split_seed: int, channels: int
) -> tuple[FileRecords, FileRecords, list[str], dict]:
    """(train, eval, class_names, info).

    Layouts: `path/train/<class>` with `path/val/<class>`; `path` and a
    separate `val_path`; or a single `path/<class>` split by `eval_fraction`.
    """
    train_root = path
    if val_path is None and os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "val")):
        train_root, val_path = os.path.join(path, "train"), os.path.join(path, "val")
    paths, labels, class_names = index_folder(train_root)

    def records(p, labels_, root):
        return FileRecords(p, labels_, num_classes=len(class_names), channels=channels, what=f"image folder '{root}'")

    info = {"train_root": train_root}
    if val_path is not None:
        val_paths, val_labels, _ = index_folder(val_path, class_names)
        info.update(split="given", eval_root=val_path)
        return records(paths, labels, train_root), records(val_paths, val_labels, val_path), class_names, info
    train_idx, eval_idx = stratified_split(labels, eval_fraction, split_seed)
    all_records = records(paths, labels, train_root)
    info["split"] = "fraction"
    return all_records.subset(train_idx), all_records.subset(eval_idx), class_names, info
