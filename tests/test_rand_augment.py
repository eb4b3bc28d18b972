"""--aa: each RandAugment op equals timm's own op (timm.data.auto_augment) on the same PIL image and magnitude,
and the grammar reads as timm's does; --reprob: random erasing erases as timm's does."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image
from torchvision_stub import import_timm

from vit_jax.data import rand_augment
from vit_jax.data.errors import DataError
from vit_jax.data.random_erasing import RandomErasing

timm = import_timm()
FILL = (124, 116, 104)


def photo_like(seed: int = 0, size=(23, 31)) -> Image.Image:
    """An RGB image with gradients and noise: every op changes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[0], 0:size[1]]
    base = np.stack([x * 255 / size[1], y * 255 / size[0], (x + y) * 127 / sum(size)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.skipif(timm is None, reason="timm is not installed")
@pytest.mark.parametrize("name", sorted(set(rand_augment.OPS_INC0 + rand_augment.OPS_INC1)))
def test_each_op_equals_timms(name, monkeypatch):
    from timm.data import auto_augment

    image = photo_like()
    for magnitude in (3.0, 9.0):
        for negate in (False, True):
            # timm negates a signed op's argument when random.random() > 0.5
            monkeypatch.setattr(auto_augment.random, "random", lambda: 0.9 if negate else 0.1)
            op = auto_augment.AugmentOp(name, prob=1.0, magnitude=magnitude,
                                        hparams={"img_mean": FILL, "interpolation": Image.Resampling.BILINEAR,
                                                 "translate_const": 250})
            want = np.asarray(op(image.copy()))
            got = np.asarray(rand_augment.apply_op(image.copy(), name, magnitude, negate, FILL,
                                                   Image.Resampling.BILINEAR))
            np.testing.assert_array_equal(got, want, err_msg=f"{name} m{magnitude} negate={negate}")
            if name != "Posterize" or magnitude > 5:  # Posterize keeps 1 bit at m3: still a change
                assert not np.array_equal(got, np.asarray(image)) or name == "SolarizeIncreasing", name


def test_posterize_to_no_bits_is_black():
    black = rand_augment.apply_op(photo_like(), "PosterizeIncreasing", 10.0)
    assert not np.asarray(black).any()


@pytest.mark.skipif(timm is None, reason="timm is not installed")
def test_op_lists_are_timms():
    from timm.data import auto_augment

    assert rand_augment.OPS_INC1 == tuple(auto_augment._RAND_INCREASING_TRANSFORMS)
    assert rand_augment.OPS_INC0 == tuple(auto_augment._RAND_TRANSFORMS)


def test_grammar():
    spec = rand_augment.parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert spec == rand_augment.RandAugment(magnitude=9.0, magnitude_std=0.5, increasing=True)
    assert spec.ops == rand_augment.OPS_INC1 and spec.num_ops == 2 and spec.prob == 0.5
    other = rand_augment.parse_rand_augment("rand-n3-m7-p1.0-mmax12-mstd101")
    assert (other.num_ops, other.magnitude, other.prob, other.magnitude_max) == (3, 7.0, 1.0, 12.0)
    assert math.isinf(other.magnitude_std) and other.ops == rand_augment.OPS_INC0
    for bad, says in (("augmix-m5", "expected RandAugment"), ("rand-q3", "unknown section 'q3'"),
                      ("rand-mx", "'mx' is not m followed by a number")):
        with pytest.raises(DataError, match=says):
            rand_augment.parse_rand_augment(bad)


def test_rand_augment_is_a_function_of_the_generator_and_keeps_shape_and_dtype():
    spec = rand_augment.parse_rand_augment("rand-m9-mstd0.5-inc1-p1.0")
    pixels = np.asarray(photo_like(1))
    outs = [spec(pixels, np.random.default_rng(seed), FILL) for seed in (0, 0, 1)]
    assert outs[0].dtype == np.uint8 and outs[0].shape == pixels.shape
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], pixels) and not np.array_equal(outs[0], outs[2])
    grey = spec(pixels[..., :1].copy(), np.random.default_rng(0), FILL)
    assert grey.shape == pixels[..., :1].shape


def erased_fractions(erase, n: int, size: int = 32) -> np.ndarray:
    """Fraction of each of n constant-one images that `erase` zeroed."""
    return np.array([np.mean(erase(np.ones((size, size, 3), np.float32)) == 0.0) for _ in range(n)])


@pytest.mark.skipif(timm is None, reason="timm is not installed")
@pytest.mark.parametrize("count", [1, 3])
def test_random_erasing_erases_as_much_as_timms(count):
    import torch
    from timm.data.random_erasing import RandomErasing as TimmErasing

    ours = RandomErasing(prob=0.5, mode="const", count=count)
    rng = np.random.default_rng(0)
    got = erased_fractions(lambda image: ours(image, rng), 3000)
    torch.manual_seed(0)
    theirs = TimmErasing(probability=0.5, mode="const", max_count=count, device="cpu")
    want = erased_fractions(
        lambda image: theirs(torch.from_numpy(image).permute(2, 0, 1).contiguous()).permute(1, 2, 0).numpy(), 3000)
    assert np.mean(got > 0) == pytest.approx(np.mean(want > 0), abs=0.04)  # erased with probability 0.5
    assert np.mean(got) == pytest.approx(np.mean(want), rel=0.1)  # the same amount, on average
    assert got.max() <= 1 / 3 + 0.02 and got[got > 0].min() >= 0.02 / count - 0.01


def test_random_erasing_fills():
    rng = np.random.default_rng(1)
    for mode in ("rand", "pixel"):
        image = RandomErasing(prob=1.0, mode=mode)(np.full((32, 32, 3), 7.0, np.float32), rng)
        inside = image[image[..., 0] != 7.0]
        assert len(inside) >= 0.02 * 32 * 32
        # one colour for the box, or a different value per pixel
        assert (len(np.unique(inside[:, 0])) == 1) == (mode == "rand")
    with pytest.raises(DataError, match="--remode 'noise' is not one of"):
        RandomErasing(prob=0.5, mode="noise")


def test_transform_runs_rand_augment_and_erasing_as_a_function_of_position():
    from vit_jax.data.randomness import uniforms
    from vit_jax.data.transforms import UNIFORMS_PER_EXAMPLE, ImageTransform

    images = [np.asarray(photo_like(i)) for i in range(4)]
    plain = ImageTransform((16, 16), (0.5,) * 3, (0.5,) * 3, 3, train=True)
    recipe = dataclasses.replace(plain, rand_augment=rand_augment.parse_rand_augment("rand-m9-mstd0.5-inc1-p1.0"),
                                 erasing=RandomErasing(1.0, "const"))
    u = uniforms(0, np.arange(4), UNIFORMS_PER_EXAMPLE)
    first, again = recipe(images, u), recipe(images, u)
    np.testing.assert_array_equal(first, again)
    assert first.shape == plain(images, u).shape and not np.allclose(first, plain(images, u))
    assert all(np.any(np.all(image == 0.0, axis=-1)) for image in first)  # every image has an erased box
    # eval is untouched by both
    evaluation = dataclasses.replace(recipe, train=False)
    np.testing.assert_array_equal(evaluation(images), dataclasses.replace(plain, train=False)(images))
