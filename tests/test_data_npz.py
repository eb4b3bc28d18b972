"""NumPy .npz source."""

import json

import numpy as np
import pytest

from vit_jax.data import DataError, DatasetSpec, load_dataset


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_uint8_rgb_split_by_fraction(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    path = _save(tmp_path / "d.npz", images=images, labels=labels, class_names=np.array(["w", "x", "y", "z"]))
    ds = load_dataset(DatasetSpec(kind="npz", path=path, split_fraction=0.25, split_seed=2))
    assert ds.class_names == ["w", "x", "y", "z"] and ds.info["split"] == "fraction"
    assert np.bincount(ds.eval.labels).tolist() == [2, 2, 2, 2]
    # Each example keeps its own label through the split.
    for source in (ds.train, ds.eval):
        for image, label in zip(source.images, source.labels):
            index = np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]
            assert labels[index] == label


def test_float_grey_with_a_separate_eval_file(tmp_path):
    train = _save(tmp_path / "t.npz", images=np.linspace(0, 1, 3 * 16).reshape(3, 4, 4), labels=[0, 2, 1])
    val = _save(tmp_path / "v.npz", images=np.zeros((2, 4, 4, 1), np.float32), labels=[3, 0])
    ds = load_dataset(DatasetSpec(kind="npz", path=tmp_path / "t.npz", val_path=val, channels=3))
    assert json.loads(json.dumps(ds.info))["path"] == train
    assert ds.class_names == ["0", "1", "2", "3"] and (len(ds.train), len(ds.eval)) == (3, 2)
    assert ds.train.images.dtype == np.float32 and ds.train.images.shape == (3, 4, 4, 1)
    assert ds.info["split"] == "given"


def test_bad_npz_files_are_clear_errors(tmp_path):
    imgs = np.zeros((3, 4, 4), np.uint8)
    cases = {
        "missing key": (dict(images=imgs), r"lacks \['labels'\]"),
        "count mismatch": (dict(images=imgs, labels=[0, 1]), "3 images but 2 labels"),
        "negative label": (dict(images=imgs, labels=[0, -1, 1]), r"labels must be in \[0, 2\)"),
        "label past class names": (
            dict(images=imgs, labels=[0, 1, 2], class_names=np.array(["a", "b"])),
            r"labels must be in \[0, 2\), found range \[0, 2\]",
        ),
        "float out of range": (dict(images=imgs + 2.0, labels=[0, 0, 0]), r"float images must be in \[0, 1\]"),
        "bad shape": (dict(images=np.zeros((3, 4)), labels=[0, 0, 0]), r"expected images shaped \(N, H, W\)"),
        "fractional label": (dict(images=imgs, labels=[0.5, 1, 0]), "labels must be integers"),
    }
    for name, (arrays, message) in cases.items():
        path = _save(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=message):
            load_dataset(DatasetSpec(kind="npz", path=path, val_path=path))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read npz file '.*junk.npz'"):
        load_dataset(DatasetSpec(kind="npz", path=str(tmp_path / "junk.npz")))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetSpec(kind="npz", path=str(tmp_path / "absent.npz")))
