"""A checkpoint's own evaluation preprocessing: `load_transform(checkpoint)`.

    transform = vit_jax.load_transform("hf-hub:timm/vit_base_patch16_224.augreg_in21k")
    x = transform(PIL.Image.open("cat.jpg"))            # float32 (H, W, 3), as the model was evaluated

Read from what the checkpoint's source library reads:
- timm (a hub directory's config.json, `pretrained_cfg`): input_size, interpolation, crop_pct, crop_mode, mean,
  std, as timm's `create_transform(**resolve_data_config(...))` for evaluation: resize to input_size / crop_pct
  (shortest edge for 'center', both edges for 'squash'), center crop, /255, normalise.
- transformers (preprocessor_config.json): do_resize with size (shortest_edge or height/width) and resample,
  do_center_crop with crop_size, do_rescale with rescale_factor, do_normalize with image_mean/std, as its
  PIL image processors (`...ImageProcessorPil`) compute them.
- anything else (a weights file, a train.py run, a ViTConfig): the project's own eval transform at the config's
  image size and pixel mean/std (a run's eval crop fraction).
Resizing is PIL's, as in both libraries; torchvision's center crop rounds its offsets, transformers' floors them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vit_jax.config import ViTConfig
from vit_jax.data.decode import decode_image
from vit_jax.data.errors import DataError
from vit_jax.data.transforms import ImageTransform
from vit_jax.formats import training_run
from vit_jax.formats.hub import is_hub_name, resolve_checkpoint
from vit_jax.formats.read import open_checkpoint

TIMM_CONFIG, HF_PREPROCESSOR = "config.json", "preprocessor_config.json"
# timm's interpolation names and transformers' PILImageResampling numbers -> PIL's filters
PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
               "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
TIMM_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT, when pretrained_cfg has none


@dataclass(frozen=True)
class Preprocess:
    """PIL resize, center crop, rescale, normalise: one image (PIL or uint8 HWC array) -> float32 (H, W, C).

    `resize` is (height, width), or an int: the shortest edge, the other kept in proportion (rounded down, as
    both libraries do); `crop` is (height, width) or None; `crop_rounding` 'round' (torchvision) or 'floor'
    (transformers) for the crop's offsets.
    """

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    resample: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale: float = 1 / 255
    crop_rounding: str = "round"
    source: str = ""

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        image = _to_pil(image)
        if self.resize is not None:
            image = image.resize(self._resized_wh(image.size), PIL_FILTERS[self.resample])
        if self.crop is not None:
            image = self._center_crop(image)
        x = np.asarray(image, np.float32)
        x = x[..., None] if x.ndim == 2 else x
        x = x * np.float32(self.rescale)
        return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)

    def _resized_wh(self, wh: tuple[int, int]) -> tuple[int, int]:
        if not isinstance(self.resize, int):
            return self.resize[1], self.resize[0]
        w, h = wh
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if w <= h else (new_long, self.resize)

    def _center_crop(self, image: Image.Image) -> Image.Image:
        (w, h), (ch, cw) = image.size, self.crop
        if ch > h or cw > w:
            raise DataError(f"the {w}x{h} image is smaller than the {cw}x{ch} crop after resizing")
        offset = (lambda n: int(round(n / 2.0))) if self.crop_rounding == "round" else (lambda n: n // 2)
        top, left = offset(h - ch), offset(w - cw)
        return image.crop((left, top, left + cw, top + ch))


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode not in ("RGB", "L") else image
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3)):
        raise DataError(f"expected a PIL image or a uint8 (H, W[, 1 or 3]) array, got {array.dtype} {array.shape}")
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)


def timm_transform(pretrained_cfg: dict[str, Any]) -> Preprocess:
    """timm's eval transform (transforms_imagenet_eval) for a pretrained_cfg."""
    _, height, width = pretrained_cfg["input_size"]
    crop_pct = pretrained_cfg.get("crop_pct") or TIMM_CROP_PCT
    crop_mode = pretrained_cfg.get("crop_mode") or "center"
    interpolation = pretrained_cfg.get("interpolation") or "bilinear"
    if interpolation not in PIL_FILTERS:
        raise DataError(f"timm interpolation {interpolation!r} is not one of {sorted(PIL_FILTERS)}")
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if crop_mode == "squash":
        resize = scale
    elif crop_mode == "center" and scale[0] == scale[1]:
        resize = scale[0]
    else:  # 'border' pads, and a non-square 'center' keeps the ratio in timm's own way: neither is read here
        raise DataError(f"timm crop_mode {crop_mode!r} at input size {height}x{width} is not supported: expected "
                        f"'squash', or 'center' with a square input size")
    return Preprocess(resize, (height, width), interpolation, tuple(pretrained_cfg["mean"]),
                      tuple(pretrained_cfg["std"]), source="timm")


def transformers_transform(processor: dict[str, Any]) -> Preprocess:
    """A transformers image processor's preprocessing (preprocessor_config.json), as its PIL backend runs it."""
    resize = None
    if processor.get("do_resize", True):
        size = processor.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        elif set(size) == {"shortest_edge"}:
            resize = int(size["shortest_edge"])
        else:
            raise DataError(f"preprocessor size {size} is not supported: expected shortest_edge, or height and width")
    crop = None
    if processor.get("do_center_crop", False):
        crop_size = processor["crop_size"]
        crop_size = {"height": crop_size, "width": crop_size} if isinstance(crop_size, int) else crop_size
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    resample = _HF_RESAMPLE[int(processor.get("resample", 2))]
    normalize = processor.get("do_normalize", True)
    return Preprocess(
        resize, crop, resample,
        tuple(processor["image_mean"]) if normalize else (0.0,), tuple(processor["image_std"]) if normalize else (1.0,),
        rescale=float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0,
        crop_rounding="floor", source="transformers",
    )


def config_transform(config: ViTConfig, crop_fraction: float = 1.0) -> _OneImage:
    """The project's own eval transform for `config`: resize to image_size / crop_fraction, center crop, normalise."""
    transform = ImageTransform(image_size=config.image_hw, mean=config.pixel_mean, std=config.pixel_std,
                               channels=config.num_channels, train=False, crop_fraction=crop_fraction)
    return _OneImage(transform)


@dataclass(frozen=True)
class _OneImage:
    """ImageTransform (batches of arrays) as a callable on one image: PIL, or an (H, W, C) array as decode_image
    gives (uint8, or float32 in [0, 1])."""

    transform: ImageTransform
    source: str = "config"

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("L" if self.transform.channels == 1 else "RGB"))
        return self.transform([image[..., None] if image.ndim == 2 else image])[0]


def source_transform(checkpoint: str | os.PathLike) -> Preprocess | None:
    """The preprocessing a timm or transformers checkpoint directory states (hub names resolved), else None."""
    path = Path(resolve_checkpoint(checkpoint))
    directory = path if path.is_dir() else path.parent
    if training_run.locate(path) is not None:
        return None
    if (directory / HF_PREPROCESSOR).is_file():
        return transformers_transform(_read_json(directory / HF_PREPROCESSOR))
    timm_config = _read_json(directory / TIMM_CONFIG) if (directory / TIMM_CONFIG).is_file() else {}
    return timm_transform(timm_config["pretrained_cfg"]) if "pretrained_cfg" in timm_config else None


def load_transform(checkpoint: str | os.PathLike | ViTConfig, crop_fraction: float = 1.0
                   ) -> Preprocess | _OneImage:
    """The eval preprocessing of `checkpoint` (a path, an hf-hub: name, or a ViTConfig): a callable on one PIL
    image or uint8 (H, W, C) array returning float32 (H, W, C), equal to the source library's preprocessing.
    `crop_fraction` applies to the project's own transform (a config, or a weights file without one)."""
    if isinstance(checkpoint, ViTConfig):
        return config_transform(checkpoint, crop_fraction)
    path = Path(resolve_checkpoint(checkpoint))
    run = training_run.locate(path)
    if run is not None:
        return run_transform(training_run.read_run_config(run[0]))
    stated = source_transform(path)
    if stated is not None:
        return stated
    config, _ = open_checkpoint(path)  # the config of any format, with its sidecar's pixel statistics
    return config_transform(config, crop_fraction)


def init_transform(init: str | os.PathLike | None, model: ViTConfig) -> Preprocess | None:
    """How a run fine-tuned from `init` evaluates: the checkpoint's own preprocessing when it states one for the
    run's image size and channels (timm, transformers), else None (the config's eval transform)."""
    # init may also name weights handed to train() in memory (no file): those state no preprocessing
    named = init and (is_hub_name(init) or os.path.exists(init))
    stated = source_transform(init) if named else None
    if stated is None or stated.crop != model.image_hw or len(stated.mean) != model.num_channels:
        return None
    return stated


def run_transform(run: dict[str, Any]) -> Preprocess | _OneImage:
    """The eval transform of a train.py run (its config.json): the one its evaluation used."""
    model = ViTConfig.from_dict(run["model"])
    stated = init_transform(run.get("train", {}).get("init"), model)
    return stated or config_transform(model, run.get("eval_crop_fraction", 1.0))


@dataclass(frozen=True)
class BatchTransform:
    """A per-image eval transform as the data loader's batch transform (vit_jax.data.loader.make_loader)."""

    transform: Preprocess | _OneImage
    train: bool = False
    random: bool = False

    def __call__(self, images, u: np.ndarray | None = None) -> np.ndarray:
        return np.stack([self.transform(_as_uint8(image)) for image in images])


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """decode_image's output for a PIL-based transform: a 16-bit or float image in [0, 1] -> uint8."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not readable JSON ({error})") from None


def transform_file(transform: Preprocess | _OneImage, path: str, channels: int) -> np.ndarray:
    """One image file through `transform`; a DataError (CorruptImageError) naming the file if it cannot be read."""
    image = decode_image(path, channels)
    return transform(_as_uint8(image) if isinstance(transform, Preprocess) else image)
