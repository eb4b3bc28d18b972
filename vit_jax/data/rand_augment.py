"""RandAugment on uint8 images, with timm's `--aa` grammar (`rand-m9-mstd0.5-inc1`).

The ops and their magnitude scales are timm's (timm.data.auto_augment), run with PIL on one
(H, W, C) uint8 image at a time in the loader's workers. Each image's choices come from a
generator seeded by the example's own uniforms (randomness.py), so they are a pure function of
the seed and the example's position, like the rest of the augmentation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vit_jax.data.errors import DataError

MAX_LEVEL = 10.0  # timm's magnitude scale: M10 is an op's full strength


def _affine(image: Image.Image, matrix, fill, resample) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(image: Image.Image, add: int) -> Image.Image:
    # Adds to the pixels below 128 only, saturating at 255.
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    if bits <= 0:
        # Keeping no bits is black. PIL >= 10 refuses bits=0 (timm then fails at PosterizeIncreasing M10);
        # older PIL's mask gave this same black image.
        return image.point([0] * 256 * len(image.getbands()))
    return image if bits >= 8 else ImageOps.posterize(image, bits)


# name -> (op(image, arg, fill, resample), level -> arg, whether the arg's sign is a coin flip)
def _enhance(kind):
    return lambda im, factor, fill, resample: kind(im).enhance(factor)


def _enhance_increasing(level: float) -> float:
    return level / MAX_LEVEL * 0.9  # 1 +- this, kept >= 0.1


OPS = {
    "AutoContrast": (lambda im, _, fill, resample: ImageOps.autocontrast(im), None, False),
    "Equalize": (lambda im, _, fill, resample: ImageOps.equalize(im), None, False),
    "Invert": (lambda im, _, fill, resample: ImageOps.invert(im), None, False),
    "Rotate": (lambda im, deg, fill, resample: im.rotate(deg, resample=resample, fillcolor=fill),
               lambda m: m / MAX_LEVEL * 30.0, True),
    "Posterize": (lambda im, bits, fill, resample: _posterize(im, bits), lambda m: int(m / MAX_LEVEL * 4), False),
    "PosterizeIncreasing": (lambda im, bits, fill, resample: _posterize(im, bits),
                            lambda m: 4 - int(m / MAX_LEVEL * 4), False),
    "Solarize": (lambda im, t, fill, resample: ImageOps.solarize(im, t),
                 lambda m: min(256, int(m / MAX_LEVEL * 256)), False),
    "SolarizeIncreasing": (lambda im, t, fill, resample: ImageOps.solarize(im, t),
                           lambda m: 256 - min(256, int(m / MAX_LEVEL * 256)), False),
    "SolarizeAdd": (lambda im, add, fill, resample: _solarize_add(im, add),
                    lambda m: min(128, int(m / MAX_LEVEL * 110)), False),
    "ShearX": (lambda im, s, fill, resample: _affine(im, (1, s, 0, 0, 1, 0), fill, resample),
               lambda m: m / MAX_LEVEL * 0.3, True),
    "ShearY": (lambda im, s, fill, resample: _affine(im, (1, 0, 0, s, 1, 0), fill, resample),
               lambda m: m / MAX_LEVEL * 0.3, True),
    "TranslateXRel": (lambda im, p, fill, resample: _affine(im, (1, 0, p * im.size[0], 0, 1, 0), fill, resample),
                      lambda m: m / MAX_LEVEL * 0.45, True),
    "TranslateYRel": (lambda im, p, fill, resample: _affine(im, (1, 0, 0, 0, 1, p * im.size[1]), fill, resample),
                      lambda m: m / MAX_LEVEL * 0.45, True),
}
for _name, _kind in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                     ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):
    OPS[_name] = (_enhance(_kind), lambda m: m / MAX_LEVEL * 1.8 + 0.1, False)
    # The increasing variants move away from 1 (no change) by a signed amount that grows with M.
    OPS[_name + "Increasing"] = (_enhance(_kind), _enhance_increasing, True)

# timm's two op lists: inc0 (its default) and inc1 (every op stronger as M grows).
_COMMON = ("AutoContrast", "Equalize", "Invert", "Rotate")
_GEOMETRY = ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
OPS_INC0 = _COMMON + ("Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness",
                      "Sharpness") + _GEOMETRY
OPS_INC1 = _COMMON + ("PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                      "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing") + _GEOMETRY


def op_argument(name: str, magnitude: float, negate: bool) -> float | None:
    """The argument op `name` takes at `magnitude` (0..10), negated if `negate` and the op is signed."""
    _, to_arg, signed = OPS[name]
    if to_arg is None:
        return None
    if name.endswith("Increasing") and name[:-len("Increasing")] in ("Color", "Contrast", "Brightness",
                                                                      "Sharpness"):
        delta = to_arg(magnitude)
        return max(0.1, 1.0 + (-delta if negate else delta))
    value = to_arg(magnitude)
    return -value if (signed and negate) else value


def apply_op(image: Image.Image, name: str, magnitude: float, negate: bool = False,
             fill: tuple[int, ...] | int = 128, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """One op at one magnitude on a PIL image (what timm's AugmentOp does at probability 1, without noise)."""
    op = OPS[name][0]
    return op(image, op_argument(name, magnitude, negate), fill, resample)


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment: `num_ops` ops drawn with replacement, each applied with probability `prob`
    at a magnitude drawn from N(magnitude, magnitude_std) (uniform on [0, M] if the std is inf),
    clipped to [0, magnitude_max]."""

    magnitude: float = 10.0
    num_ops: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = MAX_LEVEL
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return OPS_INC1 if self.increasing else OPS_INC0

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator, fill: tuple[int, ...],
                 resample=Image.Resampling.BILINEAR) -> np.ndarray:
        """One (H, W, C) uint8 image -> the augmented (H, W, C) uint8 image."""
        grey = pixels.shape[-1] == 1
        image = Image.fromarray(pixels[..., 0] if grey else pixels)
        fill_color = fill[0] if grey else tuple(fill)
        for index in rng.integers(0, len(self.ops), self.num_ops):
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            magnitude = self.magnitude
            if math.isinf(self.magnitude_std):
                magnitude = rng.uniform(0, magnitude)
            elif self.magnitude_std > 0:
                magnitude = rng.normal(magnitude, self.magnitude_std)
            magnitude = min(max(magnitude, 0.0), self.magnitude_max)
            image = apply_op(image, self.ops[index], magnitude, bool(rng.random() > 0.5), fill_color, resample)
        out = np.asarray(image)
        return out[..., None] if grey else out


def parse_rand_augment(spec: str) -> RandAugment:
    """timm's grammar: 'rand' then dash-separated m<M> n<N> p<P> mstd<S> mmax<X> inc<0|1>, in any order."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise DataError(f"--aa {spec!r}: expected RandAugment in timm's form, e.g. 'rand-m9-mstd0.5-inc1'")
    fields = {}
    keys = (("mstd", "magnitude_std", float), ("mmax", "magnitude_max", float), ("inc", "increasing", int),
            ("m", "magnitude", float), ("n", "num_ops", int), ("p", "prob", float))
    for part in parts[1:]:
        for prefix, field, kind in keys:
            if part.startswith(prefix):
                try:
                    value = kind(part[len(prefix):])
                except ValueError:
                    raise DataError(f"--aa {spec!r}: {part!r} is not {prefix} followed by a number") from None
                fields[field] = bool(value) if field == "increasing" else value
                break
        else:
            raise DataError(f"--aa {spec!r}: unknown section {part!r} (expected m, n, p, mstd, mmax or inc)")
    if fields.get("magnitude_std", 0.0) > 100:
        fields["magnitude_std"] = math.inf  # timm: a std over 100 means uniform sampling
    return RandAugment(**fields)
