"""make_loader: batches, determinism, resume, sharding, eval padding, workers."""

import json

import numpy as np
import pytest

from vit_jax.data import ArrayRecords, DataError, DatasetSpec, load_dataset, make_loader

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DatasetSpec(kind="digits"))


def indexed_source(n=50, num_classes=5):
    """Images whose every pixel holds the example's index / n: batches reveal which examples they hold."""
    images = np.broadcast_to((np.arange(n, dtype=np.float32) / n)[:, None, None, None], (n, 4, 4, 1)).copy()
    return ArrayRecords(images, np.arange(n) % num_classes, num_classes=num_classes, channels=1, what="indexed")


def example_ids(batch, n=50):
    return np.rint(batch["image"][:, 0, 0, 0] * n).astype(int)


def loader(source, **kwargs):
    kwargs.setdefault("shard_index", 0)
    kwargs.setdefault("shard_count", 1)
    mean = kwargs.pop("mean", (0.0,) * source.channels)
    std = kwargs.pop("std", (1.0,) * source.channels)
    return make_loader(source, kwargs.pop("batch_size", 8), kwargs.pop("image_size", 4), mean, std, **kwargs)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_digits_batches_have_the_contract_shapes_and_normalisation(digits):
    batch = next(make_loader(digits.train, 16, (16, 12), MEAN, STD, seed=0, shard_index=0, shard_count=1))
    assert batch["image"].shape == (16, 16, 12, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
    assert set(batch) == {"image", "label"}
    assert -1.0 - 1e-6 <= batch["image"].min() and batch["image"].max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])  # grey replicated


def test_eval_without_resampling_returns_the_stored_pixels(digits):
    batch = next(make_loader(digits.eval, 32, 8, (0.25,) * 3, (0.5,) * 3, train=False, shard_index=0, shard_count=1))
    expected = np.repeat((digits.eval.images[:32] - 0.25) / 0.5, 3, axis=-1)
    np.testing.assert_allclose(batch["image"], expected, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], digits.eval.labels[:32])


def test_same_seed_same_batches_other_seed_other_batches(digits):
    a = take(loader(digits.train, seed=7, image_size=8, mean=MEAN, std=STD), 3)
    b = take(loader(digits.train, seed=7, image_size=8, mean=MEAN, std=STD), 3)
    c = take(loader(digits.train, seed=8, image_size=8, mean=MEAN, std=STD), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["label"], c[0]["label"])


def test_each_epoch_is_a_new_permutation_and_the_remainder_is_dropped():
    source = indexed_source(50)
    batches = take(loader(source, batch_size=10, augment=False, seed=1), 10)
    epochs = [np.concatenate([example_ids(b) for b in batches[i : i + 5]]) for i in (0, 5)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(50))
    assert not np.array_equal(epochs[0], epochs[1])
    finite = list(loader(source, batch_size=12, augment=False, num_epochs=2))
    assert len(finite) == 100 // 12 and all(len(b["label"]) == 12 for b in finite)


def test_augmentation_differs_per_epoch_but_is_reproducible(digits):
    source = digits.train.subset(np.arange(16))
    a = take(loader(source, batch_size=16, image_size=12, mean=MEAN, std=STD, seed=3), 2)
    order = [np.argsort(b["label"] * 1000 + np.arange(16)) for b in a]
    assert not np.allclose(a[0]["image"], a[1]["image"])
    again = take(loader(source, batch_size=16, image_size=12, mean=MEAN, std=STD, seed=3), 2)
    np.testing.assert_array_equal(a[1]["image"][order[1]], again[1]["image"][order[1]])


def test_resume_from_saved_state_continues_identically(digits):
    original = loader(digits.train, batch_size=32, image_size=12, mean=MEAN, std=STD, seed=5)
    take(original, 3)
    state = json.loads(json.dumps(original.get_state()))  # must survive a JSON round trip
    expected = take(original, 4)
    resumed = loader(digits.train, batch_size=32, image_size=12, mean=MEAN, std=STD, seed=5)
    resumed.set_state(state)
    for want, got in zip(expected, take(resumed, 4)):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["label"], got["label"])
    # Rewinding an iterator that already ran works too.
    original.set_state(state)
    np.testing.assert_array_equal(next(original)["image"], expected[0]["image"])


def test_state_restores_on_a_different_process_count_with_the_same_global_batch(digits):
    kwargs = dict(image_size=12, mean=MEAN, std=STD, seed=6)
    one = loader(digits.train, batch_size=8, **kwargs)
    take(one, 2)
    state = one.get_state()
    expected = next(one)
    halves = []
    for i in range(2):
        half = loader(digits.train, batch_size=4, shard_index=i, shard_count=2, **kwargs)
        half.set_state(state)
        halves.append(next(half))
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), expected["image"])
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), expected["label"])


def test_state_from_another_pipeline_is_refused(digits):
    state = loader(digits.train, seed=1, mean=MEAN, std=STD).get_state()
    other = loader(digits.train, seed=2, mean=MEAN, std=STD)
    with pytest.raises(DataError, match="seed saved 1 vs now 2"):
        other.set_state(state)
    with pytest.raises(DataError, match="next_batch"):
        other.set_state({**other.get_state(), "next_batch": -3})


def test_shards_are_disjoint_cover_the_data_and_match_one_process():
    source = indexed_source(48)
    single = list(loader(source, batch_size=12, augment=False, num_epochs=1, seed=4))
    shards = [list(loader(source, batch_size=4, augment=False, num_epochs=1, seed=4, shard_index=i, shard_count=3))
              for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    ids = [np.concatenate([example_ids(b, 48) for b in s]) for s in shards]
    assert sorted(np.concatenate(ids)) == list(range(48))
    # Step t of the three processes together is step t of one process with the global batch.
    for step, global_batch in enumerate(single):
        together = np.concatenate([example_ids(shards[i][step], 48) for i in range(3)])
        np.testing.assert_array_equal(together, example_ids(global_batch, 48))


def test_sharded_augmentation_matches_one_process(digits):
    one = next(loader(digits.train, batch_size=8, image_size=12, mean=MEAN, std=STD, seed=2))
    halves = [next(loader(digits.train, batch_size=4, image_size=12, mean=MEAN, std=STD, seed=2,
                          shard_index=i, shard_count=2)) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), one["image"])


def test_eval_sees_every_example_once_padded_and_masked():
    source = indexed_source(50)
    for shard_count in (1, 3):
        shards = [list(loader(source, batch_size=8, train=False, shard_index=i, shard_count=shard_count))
                  for i in range(shard_count)]
        assert len({len(s) for s in shards}) == 1  # equal step counts on every process
        real = np.concatenate([example_ids(b)[b["mask"] == 1] for s in shards for b in s])
        assert sorted(real) == list(range(50))
        assert all(b["image"].shape[0] == 8 and b["mask"].dtype == np.float32 for s in shards for b in s)
    with pytest.raises(TypeError, match="no length"):
        len(loader(source))
    assert len(loader(source, batch_size=8, train=False)) == 7


def test_too_little_data_for_one_global_batch_is_an_error():
    with pytest.raises(DataError, match="do not fill one global batch of 64"):
        loader(indexed_source(50), batch_size=32, shard_count=2, num_epochs=1)


def test_bad_arguments_are_refused(digits):
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        loader(digits.train, batch_size=0, mean=MEAN, std=STD)
    with pytest.raises(DataError, match=r"shard_index must be in \[0, 2\)"):
        loader(digits.train, shard_index=2, shard_count=2, mean=MEAN, std=STD)
    with pytest.raises(DataError, match=r"mean has 1 values, expected one per channel \(3\)"):
        loader(digits.train, mean=(0.5,), std=STD)
    with pytest.raises(DataError, match="image_size"):
        loader(digits.train, image_size=(0, 4), mean=MEAN, std=STD)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(digits):
    kwargs = dict(batch_size=16, image_size=12, mean=MEAN, std=STD, seed=9)
    inline = take(loader(digits.train, **kwargs), 5)
    workers = loader(digits.train, num_workers=2, **kwargs)
    try:
        got = take(workers, 3)
        state = workers.get_state()
    finally:
        workers.close()
    resumed = loader(digits.train, num_workers=2, **kwargs)
    resumed.set_state(state)
    try:
        got += take(resumed, 2)
    finally:
        resumed.close()
    for want, have in zip(inline, got):
        np.testing.assert_array_equal(want["image"], have["image"])
