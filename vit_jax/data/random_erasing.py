"""Random erasing (`--reprob --remode --recount`) with timm's semantics, on a normalised image.

Each image is erased with probability `prob`; it then gets between 1 and `count` boxes (uniform),
each with an area of 2% to 1/3 of the image divided by the number of boxes and an aspect ratio
log-uniform in [0.3, 1/0.3], placed uniformly where it fits (up to 10 tries per box). A box is
filled with zeros ('const': the mean colour after normalisation), one normal colour ('rand') or
normal noise per pixel ('pixel'), as timm's RandomErasing does.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vit_jax.data.errors import DataError

MODES = ("const", "rand", "pixel")
MIN_AREA, MAX_AREA = 0.02, 1 / 3
MIN_ASPECT = 0.3
TRIES = 10


@dataclasses.dataclass(frozen=True)
class RandomErasing:
    prob: float
    mode: str = "const"
    count: int = 1

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise DataError(f"--reprob must be in [0, 1], got {self.prob!r}")
        if self.mode not in MODES:
            raise DataError(f"--remode {self.mode!r} is not one of {MODES}")
        if self.count < 1:
            raise DataError(f"--recount must be >= 1, got {self.count!r}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One normalised (h, w, C) float32 image, erased in place and returned."""
        if rng.random() >= self.prob:
            return image
        height, width, channels = image.shape
        boxes = int(rng.integers(1, self.count + 1)) if self.count > 1 else 1
        log_aspect = (math.log(MIN_ASPECT), math.log(1 / MIN_ASPECT))
        for _ in range(boxes):
            for _ in range(TRIES):
                area = rng.uniform(MIN_AREA, MAX_AREA) * height * width / boxes
                aspect = math.exp(rng.uniform(*log_aspect))
                h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if h < height and w < width:
                    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                    image[top:top + h, left:left + w] = self._fill(rng, h, w, channels)
                    break
        return image

    def _fill(self, rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
        if self.mode == "pixel":
            return rng.standard_normal((h, w, channels), dtype=np.float32)
        if self.mode == "rand":
            return rng.standard_normal((1, 1, channels), dtype=np.float32)
        return np.zeros((1, 1, channels), np.float32)
