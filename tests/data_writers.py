"""Writers for tiny datasets in the on-disk layouts the data package reads."""

from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image


def class_pattern(label: int, size: int = 12) -> np.ndarray:
    """A uint8 RGB image whose content identifies its class (a bright band at row `label`)."""
    image = np.full((size, size, 3), 20, np.uint8)
    image[label % size] = (200, 100 + 10 * label, 50)
    return image


def save_image(path: str, rgb: np.ndarray, mode: str = "RGB") -> None:
    """Save `rgb` converted to a PIL `mode` ('RGB', 'L', 'RGBA', 'P', 'I;16', 'LA', 'CMYK')."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(rgb)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        image = Image.fromarray(grey)  # uint16 -> PIL's 16-bit grey mode
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_image_folder(root: str, counts: dict[str, int], size: int = 12, ext: str = "png") -> None:
    """root/<class>/<i>.<ext> for each class, images from `class_pattern`."""
    for label, (name, count) in enumerate(counts.items()):
        for i in range(count):
            save_image(os.path.join(root, name, f"{i:03d}.{ext}"), class_pattern(label, size))


def _dump(path: str, content) -> None:
    with open(path, "wb") as f:
        pickle.dump(content, f)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) uint8 -> CIFAR's (N, 3072) rows: red plane, green plane, blue plane."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def random_cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_cifar10(directory: str, per_batch: int = 4, seed: int = 0) -> dict:
    """A CIFAR-10 directory with 5 train batches and a test batch; returns what was written."""
    os.makedirs(directory, exist_ok=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(os.path.join(directory, "batches.meta"), {b"label_names": names, b"num_cases_per_batch": per_batch})
    written = {"train_images": [], "train_labels": []}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = random_cifar_images(per_batch, seed + i)
        labels = [(i * per_batch + j) % 10 for j in range(per_batch)]
        _dump(os.path.join(directory, name),
              {b"batch_label": name.encode(), b"data": cifar_rows(images), b"labels": labels})
        if name == "test_batch":
            written.update(test_images=images, test_labels=np.array(labels))
        else:
            written["train_images"].append(images)
            written["train_labels"].extend(labels)
    written["train_images"] = np.concatenate(written["train_images"])
    written["train_labels"] = np.array(written["train_labels"])
    written["class_names"] = [n.decode() for n in names]
    return written


def write_cifar100(directory: str, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    """A CIFAR-100 directory (train, test, meta) with fine and coarse labels."""
    os.makedirs(directory, exist_ok=True)
    fine = [f"class{i:02d}".encode() for i in range(100)]
    _dump(os.path.join(directory, "meta"), {b"fine_label_names": fine, b"coarse_label_names": [b"c"] * 20})
    written = {"class_names": [n.decode() for n in fine]}
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 1)):
        images = random_cifar_images(n, seed + offset)
        labels = [(7 * j + offset) % 100 for j in range(n)]
        content = {b"data": cifar_rows(images), b"fine_labels": labels, b"coarse_labels": [lab // 5 for lab in labels]}
        _dump(os.path.join(directory, split), content)
        written[f"{split}_images"], written[f"{split}_labels"] = images, np.array(labels)
    return written
