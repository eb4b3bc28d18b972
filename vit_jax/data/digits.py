"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

import numpy as np

from vit_jax.data.records import ArrayRecords, AugmentDefaults
from vit_jax.data.split import stratified_split

# Digits are not mirror-symmetric and nearly fill their 8x8 frame: no flips,
# crops that keep most of the digit, and no eval crop.
DIGITS_DEFAULTS = AugmentDefaults(flip=False, crop_scale=(0.7, 1.0), crop_fraction=1.0)


def load_digits_records(eval_fraction: float, split_seed: int,
                        channels: int) -> tuple[ArrayRecords, ArrayRecords, list[str], dict]:
    """(train, eval, class_names, info): a fixed stratified split of the digits, pixels in [0, 1]."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values are 0..16
    labels = digits.target.astype(np.int32)
    records = ArrayRecords(images, labels, num_classes=10, channels=channels, what="digits", defaults=DIGITS_DEFAULTS)
    train_idx, eval_idx = stratified_split(labels, eval_fraction, split_seed)
    info = {"source": "sklearn.datasets.load_digits", "image_shape": [8, 8, 1], "split": "fraction"}
    return records.subset(train_idx), records.subset(eval_idx), [str(d) for d in range(10)], info
