"""CIFAR-10/100 from their python-pickle layout, written here at tiny size."""

import os
import pickle

import numpy as np
import pytest
from data_writers import write_cifar10, write_cifar100

from vit_jax.data import DataError, DatasetSpec, load_dataset


def test_cifar10_images_labels_and_names(tmp_path):
    written = write_cifar10(str(tmp_path / "cifar-10-batches-py"), per_batch=4)
    # The parent directory works too: the tarball's folder is found inside it.
    ds = load_dataset(DatasetSpec(kind="cifar10", path=str(tmp_path)))
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"] and ds.num_classes == 10
    assert (len(ds.train), len(ds.eval)) == (20, 4) and ds.info["split"] == "given"
    np.testing.assert_array_equal(ds.train.images, written["train_images"])  # planes -> HWC exactly
    np.testing.assert_array_equal(ds.train.labels, written["train_labels"])
    np.testing.assert_array_equal(ds.eval.images, written["test_images"])
    np.testing.assert_array_equal(ds.eval.labels, written["test_labels"])


def test_cifar100_uses_fine_labels_and_can_go_grey(tmp_path):
    written = write_cifar100(str(tmp_path), n_train=12, n_test=6)
    ds = load_dataset(DatasetSpec(kind="cifar100", path=str(tmp_path), channels=1))
    assert ds.num_classes == 100 and ds.class_names[7] == "class07"
    np.testing.assert_array_equal(ds.train.labels, written["train_labels"])
    assert ds.train.images.shape == (12, 32, 32, 1)
    luma = written["train_images"].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(ds.train.images[..., 0] - luma).max() <= 0.5 + 1e-6


def _rewrite(path, update):
    with open(path, "rb") as f:
        content = pickle.load(f, encoding="bytes")
    content.update(update)
    with open(path, "wb") as f:
        pickle.dump(content, f)


def test_bad_cifar_directories_are_clear_errors(tmp_path):
    spec = DatasetSpec(kind="cifar10", path=str(tmp_path))
    write_cifar10(str(tmp_path))
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match=r"lacks \['data_batch_3'\]"):
        load_dataset(spec)
    write_cifar10(str(tmp_path))
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="cannot read CIFAR file '.*data_batch_2'"):
        load_dataset(spec)
    write_cifar10(str(tmp_path))
    _rewrite(tmp_path / "test_batch", {b"labels": [0, 1, 2, 10]})
    with pytest.raises(DataError, match=r"test_batch.*labels must be in \[0, 10\), found range \[0, 10\]"):
        load_dataset(spec)
    write_cifar10(str(tmp_path))
    _rewrite(tmp_path / "data_batch_1", {b"labels": [0, 1]})
    with pytest.raises(DataError, match="data_batch_1.*4 images but 2 labels"):
        load_dataset(spec)
    write_cifar10(str(tmp_path))
    _rewrite(tmp_path / "data_batch_1", {b"data": np.zeros((4, 100), np.uint8)})
    with pytest.raises(DataError, match=r"must be uint8 \(N, 3072\)"):
        load_dataset(spec)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetSpec(kind="cifar100", path=str(tmp_path / "missing")))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_pickles_that_would_run_code_are_refused(tmp_path):
    write_cifar10(str(tmp_path))
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": _RunsCode()}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(DatasetSpec(kind="cifar10", path=str(tmp_path)))
