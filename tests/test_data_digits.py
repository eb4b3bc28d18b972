"""Digits source and the stratified split."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from vit_jax.data import DataError, DatasetSpec, load_dataset
from vit_jax.data.split import stratified_split


def test_digits_split_covers_every_image_once_with_real_labels():
    ds = load_dataset(DatasetSpec(kind="digits", channels=1))
    assert ds.num_classes == 10 and ds.class_names == [str(d) for d in range(10)]
    assert len(ds.train) + len(ds.eval) == 1797
    assert ds.info["num_train"] == len(ds.train) and ds.info["split_seed"] == 0
    assert json.loads(json.dumps(ds.info)) == ds.info  # recorded in the run config
    reference = load_digits()
    # Every stored image is one of sklearn's, scaled to [0, 1], with its own label.
    key = {img.tobytes(): int(t) for img, t in zip((reference.images / 16.0).astype(np.float32), reference.target)}
    seen = []
    for source in (ds.train, ds.eval):
        assert source.images.shape[1:] == (8, 8, 1) and source.images.dtype == np.float32
        for image, label in zip(source.images, source.labels):
            assert key[image[..., 0].tobytes()] == label
            seen.append(image.tobytes())
    assert len(set(seen)) == len(set(key))  # nothing lost (digits has a few duplicates)
    assert 0.0 == min(s.images.min() for s in (ds.train, ds.eval))
    assert 1.0 == max(s.images.max() for s in (ds.train, ds.eval))


def test_digits_split_is_stratified_and_seeded():
    a = load_dataset(DatasetSpec(kind="digits", split_seed=3))
    b = load_dataset(DatasetSpec(kind="digits", split_seed=3))
    c = load_dataset(DatasetSpec(kind="digits", split_seed=4))
    np.testing.assert_array_equal(a.eval.images, b.eval.images)
    assert not np.array_equal(a.eval.images, c.eval.images)
    counts = np.bincount(load_digits().target)
    np.testing.assert_array_equal(np.bincount(a.eval.labels), np.round(0.2 * counts).astype(int))


def test_grey_source_keeps_one_stored_channel_for_either_setting():
    # Replication to RGB happens after resampling (same result, a third of the work).
    rgb = load_dataset(DatasetSpec(kind="digits", channels=3))
    assert rgb.train.channels == 3 and rgb.train.images.shape[-1] == 1


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 50 + [1] * 2 + [2] * 7)
    train, eval_ = stratified_split(labels, 0.25, seed=0)
    assert set(labels[train]) == set(labels[eval_]) == {0, 1, 2}
    assert not set(train) & set(eval_) and len(train) + len(eval_) == len(labels)
    assert np.sum(labels[eval_] == 0) == round(0.25 * 50)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_split_fraction_is_refused(fraction):
    with pytest.raises(DataError, match="split_fraction"):
        DatasetSpec(kind="digits", split_fraction=fraction)


def test_bad_spec_is_refused():
    with pytest.raises(DataError, match="unknown dataset kind 'mnist'"):
        DatasetSpec(kind="mnist")
    with pytest.raises(DataError, match="channels must be 1"):
        DatasetSpec(kind="digits", channels=2)
    with pytest.raises(DataError, match="needs a path"):
        DatasetSpec(kind="folder")
    with pytest.raises(DataError, match="takes no path"):
        DatasetSpec(kind="digits", path="/tmp")
