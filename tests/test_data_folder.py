"""Image-folder source: layouts, mixed image modes, corrupt files and bad folders."""

import logging
import os
import pickle

import numpy as np
import pytest
from data_writers import class_pattern, save_image, write_image_folder
from PIL import Image

from vit_jax.data import CorruptImageError, DataError, DatasetSpec, load_dataset, make_loader

MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def loader(source, train=True, **kwargs):
    return make_loader(
        source, batch_size=kwargs.pop("batch_size", 4), image_size=12, mean=MEAN[: source.channels],
        std=STD[: source.channels], train=train, shard_index=0, shard_count=1, **kwargs,
    )


def test_train_and_val_subfolders(tmp_path):
    write_image_folder(str(tmp_path / "train"), {"cat": 5, "dog": 3})
    write_image_folder(str(tmp_path / "val"), {"cat": 2, "dog": 1})
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert (len(ds.train), len(ds.eval)) == (8, 3)
    assert ds.info["split"] == "given" and "split_seed" not in ds.info
    np.testing.assert_array_equal(ds.eval.labels, [0, 0, 1])
    pixels, label = ds.train[7]
    np.testing.assert_array_equal(pixels, class_pattern(1))
    assert label == 1


def test_single_folder_split_by_fraction_is_stratified_and_seeded(tmp_path):
    write_image_folder(str(tmp_path), {"a": 10, "b": 20})
    first = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path), split_fraction=0.3, split_seed=1))
    again = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path), split_fraction=0.3, split_seed=1))
    other = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path), split_fraction=0.3, split_seed=2))
    assert np.bincount(first.eval.labels).tolist() == [3, 6]
    assert first.eval.paths == again.eval.paths != other.eval.paths
    assert not set(first.train.paths) & set(first.eval.paths)
    assert len(first.train) + len(first.eval) == 30


def test_separate_val_path_must_not_add_classes(tmp_path):
    write_image_folder(str(tmp_path / "tr"), {"a": 2, "b": 2})
    write_image_folder(str(tmp_path / "va"), {"b": 1})
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "tr"), val_path=str(tmp_path / "va")))
    np.testing.assert_array_equal(ds.eval.labels, [1])  # 'b' keeps the training label
    write_image_folder(str(tmp_path / "va"), {"zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "tr"), val_path=str(tmp_path / "va")))


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_image_modes_decode_to_the_configured_channels(tmp_path, channels):
    modes = ["RGB", "L", "RGBA", "P", "LA", "I;16", "CMYK"]
    rgb = class_pattern(3)
    for i, mode in enumerate(modes):
        ext = "jpg" if mode == "CMYK" else "png"
        save_image(str(tmp_path / "x" / f"{i}_{mode.replace(';', '')}.{ext}"), rgb, mode)
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path), val_path=str(tmp_path), channels=channels))
    grey = np.asarray(Image.fromarray(rgb).convert("L"), np.float32)
    for i in range(len(ds.train)):
        pixels, _ = ds.train[i]
        assert pixels.shape == (12, 12, channels), ds.train.paths[i]
    batch = next(loader(ds.eval, train=False, batch_size=len(modes)))
    assert batch["image"].shape == (len(modes), 12, 12, channels) and batch["mask"].sum() == len(modes)
    # Every mode shows the same picture: grey-level content agrees (JPEG/CMYK and palettes are lossy).
    for image, path in zip(batch["image"], ds.eval.paths):
        assert np.abs(image.mean(axis=-1) * 255 - grey).mean() < 12, path


def test_corrupt_file_is_skipped_with_a_warning_or_raises(tmp_path, caplog):
    write_image_folder(str(tmp_path / "train"), {"a": 3, "b": 3})
    write_image_folder(str(tmp_path / "val"), {"a": 1, "b": 1})
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"not an image at all")
    good = (tmp_path / "val" / "b" / "000.png").read_bytes()
    (tmp_path / "val" / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    assert len(ds.train) == 7
    with caplog.at_level(logging.WARNING, logger="vit_jax.data.batches"):
        batches = [b for b, _ in zip(loader(ds.train, batch_size=7, seed=5, num_epochs=2), range(2))]
    assert all(b["image"].shape == (7, 12, 12, 3) for b in batches)
    skip_messages = [r.getMessage() for r in caplog.records if "broken.png" in r.getMessage()]
    assert len(skip_messages) == 1 and "skipped so far" in skip_messages[0]  # warned once, counted
    # Eval masks the corrupt file out instead of shifting the others.
    eval_batch = next(loader(ds.eval, train=False, batch_size=4))  # 3 files, one corrupt, one padding slot
    np.testing.assert_array_equal(eval_batch["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(eval_batch["label"], [0, 1, 0, 0])
    with pytest.raises(CorruptImageError, match="broken.png"):
        next(loader(ds.train, batch_size=7, on_corrupt="error", num_epochs=1, augment=False))
    with pytest.raises(DataError, match="on_corrupt"):
        loader(ds.train, on_corrupt="ignore")


@pytest.mark.slow
def test_corrupt_file_error_crosses_from_worker_processes(tmp_path):
    error = pickle.loads(pickle.dumps(CorruptImageError("/x/y.png", "truncated")))
    assert (error.path, str(error)) == ("/x/y.png", "cannot decode image file '/x/y.png': truncated")
    write_image_folder(str(tmp_path), {"a": 3})
    (tmp_path / "a" / "broken.png").write_bytes(b"junk")
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path), val_path=str(tmp_path)))
    it = loader(ds.train, batch_size=4, on_corrupt="error", augment=False, num_epochs=1, num_workers=1)
    try:
        with pytest.raises(CorruptImageError, match="broken.png"):
            next(it)
    finally:
        it.close()


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "nope")))
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    write_image_folder(str(tmp_path), {"a": 2})
    os.makedirs(tmp_path / "empty_class")
    (tmp_path / "empty_class" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"class folder '.*empty_class' has no image files"):
        load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(DatasetSpec(kind="folder", path=str(tmp_path / "file")))


def test_directory_links_back_into_the_dataset_are_not_followed(tmp_path, caplog):
    root = tmp_path / "d"
    write_image_folder(str(root), {"a": 3, "b": 3})
    os.symlink("..", root / "a" / "loop")  # -> d itself: 3 classes' worth again, and recursively
    os.symlink(str(root / "b"), root / "a" / "sibling")  # b's images would be labelled a
    outside = tmp_path / "extra"
    write_image_folder(str(outside), {"x": 2})
    os.symlink(str(outside / "x"), root / "b" / "more")  # a link out of the dataset is followed
    with caplog.at_level(logging.WARNING, logger="vit_jax.data.folder"):
        ds = load_dataset(DatasetSpec(kind="folder", path=str(root), split_fraction=0.25))
    assert len(ds.train) + len(ds.eval) == 3 + 3 + 2
    paths = ds.train.paths + ds.eval.paths
    assert len({os.path.realpath(p) for p in paths}) == len(paths)  # no file twice, so none in train and eval
    labels = np.concatenate([ds.train.labels, ds.eval.labels])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 1, 1]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "loop" in warned and "sibling" in warned


def test_special_files_are_skipped_unopened_and_broken_links_count_as_corrupt(tmp_path, caplog):
    write_image_folder(str(tmp_path / "train"), {"a": 3, "b": 3})
    write_image_folder(str(tmp_path / "val"), {"a": 1, "b": 1})
    os.mkfifo(tmp_path / "train" / "a" / "pipe.png")  # opening it would block forever
    os.symlink(str(tmp_path / "gone.png"), tmp_path / "train" / "b" / "dangling.png")
    with caplog.at_level(logging.WARNING, logger="vit_jax.data.folder"):
        ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    assert any("pipe.png" in r.getMessage() and "a FIFO" in r.getMessage() for r in caplog.records)
    assert not any(p.endswith("pipe.png") for p in ds.train.paths)
    dangling = ds.train.paths.index(str(tmp_path / "train" / "b" / "dangling.png"))
    with pytest.raises(CorruptImageError, match="broken symbolic link"):
        ds.train[dangling]
    batch = next(loader(ds.train, batch_size=7, seed=0, num_epochs=1))  # skipped like a corrupt image
    assert batch["image"].shape == (7, 12, 12, 3)


def test_decoding_refuses_special_files_without_opening_them(tmp_path):
    from vit_jax.data.decode import decode_image

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(DataError, match="is a FIFO, not an image file"):
        decode_image(str(tmp_path / "pipe.png"), 3)
    with pytest.raises(DataError, match="is a character device"):
        decode_image("/dev/null", 3)


def test_a_folder_of_broken_files_is_summarised_not_one_line_each(tmp_path, caplog):
    from vit_jax.data import batches

    batches.reset_skipped_corrupt_files()
    with caplog.at_level(logging.WARNING, logger="vit_jax.data.batches"):
        for i in range(1500):  # what skipping 1,500 zero-byte files reports (decoding them all takes minutes)
            batches._note_corrupt(CorruptImageError(str(tmp_path / f"empty{i}.png"), "file is empty"))
    assert batches.skipped_corrupt_files() == 1500
    lines = [r.getMessage() for r in caplog.records]
    batches.reset_skipped_corrupt_files()
    assert len(lines) == batches.NAMED_CORRUPT_FILES + 3, lines  # ten named, a note, then the counts 100 and 1000
    assert "without a line each" in lines[batches.NAMED_CORRUPT_FILES]
    assert lines[-1] == f"skipping corrupt image files: 1000 skipped so far in this process (the latest: " \
                        f"{tmp_path / 'empty999.png'})"


def test_an_image_over_the_decompression_bomb_threshold_warns_once_in_one_line(tmp_path, monkeypatch):
    from vit_jax.data.decode import LargeImageWarning, decode_image

    save_image(str(tmp_path / "big.png"), np.zeros((40, 50, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 2000 pixels: over the threshold, under twice it
    with pytest.warns(LargeImageWarning) as caught:
        first, again = decode_image(str(tmp_path / "big.png"), 3), decode_image(str(tmp_path / "big.png"), 3)
    assert first.shape == again.shape == (40, 50, 3)
    assert [str(w.message) for w in caught] == [
        f"'{tmp_path / 'big.png'}' is 50x40 = 2,000 pixels, above PIL's decompression-bomb threshold of 1,500: "
        f"decoding it anyway (slow, and memory-hungry)"]
