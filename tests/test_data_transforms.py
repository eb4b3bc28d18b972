"""Crop boxes, resampling against PIL, flips, normalisation, decode_image_file."""

import numpy as np
import pytest
from data_writers import class_pattern, save_image, write_image_folder
from PIL import Image

from vit_jax.data import DataError, DatasetSpec, ImageTransform, decode_image_file, load_dataset, make_loader
from vit_jax.data.randomness import uniforms
from vit_jax.data.transforms import (
    UNIFORMS_PER_EXAMPLE,
    center_crop_boxes,
    random_resized_crop_boxes,
    resample_box,
    resample_float_batch,
)


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_float_batch_resampling_matches_pil_on_random_boxes(resample):
    rng = np.random.default_rng(0)
    pil_filter = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[resample]
    for _ in range(20):
        height, width = rng.integers(4, 40, 2)
        out_hw = tuple(int(v) for v in rng.integers(3, 50, 2))  # up- and down-sampling
        image = rng.random((height, width)).astype(np.float32)
        box = random_resized_crop_boxes([height], [width], rng.random((1, 40)), (0.08, 1.0), (0.75, 4 / 3))[0]
        expected = np.asarray(Image.fromarray(image).resize(out_hw[::-1], pil_filter, box=tuple(box)))
        got = resample_float_batch(image[None, ..., None], box[None], out_hw, resample)[0, ..., 0]
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_uint8_and_float_paths_agree_within_rounding():
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    box = (3.25, 1.5, 27.0, 18.75)
    via_pil = resample_box(rgb, box, (16, 16), "bilinear") / 255.0
    via_matmul = resample_box(rgb.astype(np.float32) / 255, box, (16, 16), "bilinear")
    # PIL's uint8 path uses fixed-point weights and rounds after each of its two passes.
    assert np.abs(via_pil - via_matmul).max() <= 1.5 / 255
    assert np.abs(via_pil - via_matmul).mean() <= 0.5 / 255


def test_center_crop_keeps_the_crop_fraction_of_the_shorter_side():
    np.testing.assert_allclose(center_crop_boxes([8], [8], (8, 8), 1.0), [[0, 0, 8, 8]])
    left, top, right, bottom = center_crop_boxes([100], [200], (224, 224), 0.875)[0]
    assert right - left == pytest.approx(87.5) and bottom - top == pytest.approx(87.5)
    assert (left + right) / 2 == pytest.approx(100) and (top + bottom) / 2 == pytest.approx(50)
    left, top, right, bottom = center_crop_boxes([100], [100], (50, 100), 1.0)[0]  # wide output
    assert (right - left, bottom - top) == pytest.approx((100, 50))


def test_random_resized_crops_stay_inside_and_respect_scale_and_ratio():
    heights, widths = np.full(2000, 30), np.full(2000, 50)
    u = uniforms(0, np.arange(2000), UNIFORMS_PER_EXAMPLE)
    boxes = random_resized_crop_boxes(heights, widths, u, (0.2, 0.9), (0.5, 2.0))
    left, top, right, bottom = boxes.T
    assert (left >= 0).all() and (top >= 0).all() and (right <= 50 + 1e-9).all() and (bottom <= 30 + 1e-9).all()
    area = (right - left) * (bottom - top) / (30 * 50)
    aspect = (right - left) / (bottom - top)
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.9 + 1e-9
    assert aspect.min() >= 0.5 - 1e-9 and aspect.max() <= 2.0 + 1e-9
    # A strip that no try can fit falls back to its center, clamped to the ratio.
    strip = random_resized_crop_boxes([4], [100], u[:1], (0.9, 1.0), (0.75, 4 / 3))[0]
    np.testing.assert_allclose(strip, [50 - 8 / 3, 0, 50 + 8 / 3, 4])


def test_flip_mirrors_about_half_the_images_and_can_be_disabled():
    image = np.arange(36, dtype=np.float32).reshape(1, 6, 6, 1) / 36
    images = np.repeat(image, 400, axis=0)
    u = uniforms(5, np.arange(400), UNIFORMS_PER_EXAMPLE)
    common = dict(image_size=(6, 6), mean=(0.0,), std=(1.0,), channels=1, train=True, crop_scale=(1, 1),
                  crop_ratio=(1, 1))
    out = ImageTransform(flip=True, **common)(images, u)
    mirrored = np.all(np.isclose(out, image[:, :, ::-1]), axis=(1, 2, 3))
    same = np.all(np.isclose(out, image), axis=(1, 2, 3))
    assert (mirrored | same).all() and 150 < mirrored.sum() < 250
    assert np.all(np.isclose(ImageTransform(flip=False, **common)(images, u), image))


def test_normalisation_and_grey_to_rgb():
    transform = ImageTransform((2, 2), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), channels=3, train=False)
    out = transform(np.full((1, 2, 2, 1), 0.5, np.float32))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, 0.25])


def test_transform_rejects_bad_settings():
    common = dict(image_size=(4, 4), mean=(0.5,), std=(0.5,), channels=1, train=True)
    for bad, message in [
        (dict(std=(0.0,)), "std must be > 0"),
        (dict(crop_fraction=0.0), "crop_fraction"),
        (dict(crop_scale=(0.5, 0.2)), "crop_scale"),
        (dict(resample="nearest"), "resample must be one of"),
    ]:
        with pytest.raises(DataError, match=message):
            ImageTransform(**{**common, **bad})


def test_decode_image_file_equals_the_eval_loader(tmp_path):
    write_image_folder(str(tmp_path / "train"), {"a": 2, "b": 2}, size=20)
    write_image_folder(str(tmp_path / "val"), {"a": 1, "b": 1}, size=20)
    save_image(str(tmp_path / "val" / "b" / "wide.png"), np.tile(class_pattern(2, 20), (1, 2, 1)), "RGBA")
    ds = load_dataset(DatasetSpec(kind="folder", path=str(tmp_path)))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    batch = next(make_loader(ds.eval, 3, 16, mean, std, train=False, shard_index=0, shard_count=1))
    for image, path in zip(batch["image"], ds.eval.paths):
        np.testing.assert_array_equal(decode_image_file(path, 16, mean, std, channels=3), image)
    with pytest.raises(DataError, match="does not exist"):
        decode_image_file(str(tmp_path / "missing.png"), 16, mean, std)


def test_uniforms_are_reproducible_and_seed_dependent():
    a = uniforms(1, np.array([0, 5, 9]), 4)
    np.testing.assert_array_equal(a[1], uniforms(1, np.array([5]), 4)[0])
    assert not np.array_equal(a, uniforms(2, np.array([0, 5, 9]), 4))
    big = uniforms(3, np.arange(50_000), 2)
    assert 0 <= big.min() and big.max() < 1 and abs(big.mean() - 0.5) < 0.01


def test_large_float_images_take_pil_planes_and_agree_with_the_matrix_path():
    images = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
    transform = ImageTransform((120, 120), mean=(0.0,) * 3, std=(1.0,) * 3, channels=3, train=False,
                               crop_fraction=0.875)
    boxes = center_crop_boxes([40, 40], [40, 40], (120, 120), 0.875)
    np.testing.assert_allclose(transform(images), resample_float_batch(images, boxes, (120, 120), "bilinear"),
                               atol=1e-5)
