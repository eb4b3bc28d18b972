"""Attention maps of a ViT over image files: rollout and per-head maps, as arrays and pictures.

    python -m vit_jax.attention_map CHECKPOINT IMAGE... --out DIR
    python -m vit_jax.attention_map runs/NAME digit.png --out maps --head-fusion max --discard-ratio 0.9
    python train.py predict --checkpoint runs/NAME --attention-map maps digit.png

CHECKPOINT is a training run's directory (its best or `--step` checkpoint; the
images go through the run's evaluation transform) or any weights file
`vit_jax.load_pretrained` reads (the images are resized and center-cropped to
the model's resolution and normalised with the checkpoint's pixel mean/std).
For each image it writes into DIR:

    <stem>_rollout.npy   float32 (grid_h, grid_w) attention rollout, not rescaled (vit_jax.rollout)
    <stem>_rollout.png   the image as the model saw it (its crop), with the rollout overlaid
    <stem>_heads.png     one cell per layer (rows L0...) x head (columns H0...): the class token's attention,
                         each cell scaled from its minimum to its maximum (the colour bar beside them)

See docs/attention_maps.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import DataError, decode_image_file
from vit_jax.data.decode import decode_image
from vit_jax.data.transforms import center_crop_boxes, resample_box
from vit_jax.formats.training_run import locate
from vit_jax.pretrained import load_pretrained, load_run
from vit_jax.rollout import HEAD_FUSIONS, attention_rollout, head_maps
from vit_jax.training.checkpoint import CheckpointError

FRAMEWORKS = ("jax", "torch")
MIN_DISPLAY = 224  # the overlay is the model's input size scaled up by an integer until its short side reaches this
MIN_CELL = 64  # likewise for each cell of the per-head grid
CELL_GAP = 2  # pixels between (and around) the cells of the per-head grid
HEAT_ALPHA = 0.5  # weight of the heat colours over the image
COLORMAP = "jet"
LABEL_LEFT, LABEL_TOP = 24, 14  # room for the per-head grid's row (L0, L1, ...) and column (H0, H1, ...) labels
COLOUR_BAR_WIDTH, COLOUR_BAR_SPACE = 10, 40  # the scale beside the grid, and the room for it and its words
BACKGROUND, TEXT = 32, (230, 230, 230)


# -- loading ------------------------------------------------------------------


def load_checkpoint(path: str, step: int | None = None) -> tuple[ViTConfig, dict, float]:
    """(model config, Flax params, eval crop fraction) of a run directory or a weights file."""
    if locate(path) == (Path(path), None):  # a run's --workdir
        model, params, run, _ = load_run(path, step)
        return model, params, run.get("eval_crop_fraction", 1.0)
    if step is not None:
        raise ConfigError(f"--step applies to a training run directory; {path} is not one")
    model, params = load_pretrained(path)
    return model, params, 1.0


def attention_forward(config: ViTConfig, params: dict, framework: str = "jax") -> Callable[[np.ndarray], list]:
    """images (B, h, w, C) normalised -> per-layer attention probabilities (B, heads, seq, seq)."""
    if framework == "jax":
        import jax

        from vit_jax.model import VisionTransformer, apply_with_intermediates

        model = VisionTransformer(config)

        @jax.jit
        def probs(p, x):
            _, inter = apply_with_intermediates(model, {"params": p}, x, return_attention=True)
            return [inter[f"blocks.{i}.attn_probs"] for i in range(config.num_layers)]

        return lambda images: [np.asarray(a) for a in probs(params, images)]
    if framework == "torch":
        import torch

        from vit_torch_ref.pretrained import from_flax_params

        twin = from_flax_params(params, config)

        def torch_probs(images):
            with torch.no_grad():
                _, inter = twin(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                                return_attention=True)
            return [inter[f"blocks.{i}.attn_probs"].float().numpy() for i in range(config.num_layers)]

        return torch_probs
    raise ConfigError(f"framework {framework!r} is not one of {FRAMEWORKS}")


# -- drawing ------------------------------------------------------------------


def scaled_size(hw: tuple[int, int], minimum: int) -> tuple[int, int]:
    """`hw` times the smallest integer that brings its short side to `minimum` (at least 1)."""
    factor = max(1, math.ceil(minimum / min(hw)))
    return hw[0] * factor, hw[1] * factor


def model_view(path: str, config: ViTConfig, crop_fraction: float, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB (h, w, 3): the part of the image file the model sees, resampled to `size` (h, w)."""
    pixels = decode_image(path, 3)  # uint8, or float32 in [0, 1] for 16-bit files
    box = center_crop_boxes([pixels.shape[0]], [pixels.shape[1]], config.image_hw, crop_fraction)[0]
    view = resample_box(pixels, box, size, "bicubic")
    if view.dtype == np.uint8:
        return view
    return np.clip(np.round(view * 255.0), 0, 255).astype(np.uint8)


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def heat_overlay(image: np.ndarray, grid_map: np.ndarray, smooth: bool = True) -> np.ndarray:
    """uint8 (h, w, 3): `image` blended with `grid_map` min-max scaled, upsampled
    (bilinear if `smooth`, else one block per patch) and coloured."""
    from matplotlib import colormaps

    height, width = image.shape[:2]
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    heat = np.asarray(Image.fromarray(_unit(grid_map).astype(np.float32)).resize((width, height), resample))
    colours = colormaps[COLORMAP](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - HEAT_ALPHA) * image.astype(np.float32) + HEAT_ALPHA * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def heads_picture(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """uint8 grid of (layers, heads, grid_h, grid_w) maps over `image` resized to one cell, rows = layers.

    Rows are labelled L0, L1, ... (layers from the input side), columns H0, H1, ... (heads); the colour
    bar on the right reads from each cell's own minimum (bottom) to its maximum (top).
    """
    layers, heads, grid_h, grid_w = maps.shape
    cell_h, cell_w = scaled_size((grid_h, grid_w), MIN_CELL)
    small = np.asarray(Image.fromarray(image).resize((cell_w, cell_h), Image.Resampling.BICUBIC))
    grid_height, grid_width = layers * (cell_h + CELL_GAP) + CELL_GAP, heads * (cell_w + CELL_GAP) + CELL_GAP
    out = np.full((LABEL_TOP + grid_height, LABEL_LEFT + grid_width + COLOUR_BAR_SPACE, 3), BACKGROUND, np.uint8)
    for layer in range(layers):
        for head in range(heads):
            top = LABEL_TOP + CELL_GAP + layer * (cell_h + CELL_GAP)
            left = LABEL_LEFT + CELL_GAP + head * (cell_w + CELL_GAP)
            out[top : top + cell_h, left : left + cell_w] = heat_overlay(small, maps[layer, head], smooth=False)
    bar_left = LABEL_LEFT + grid_width + CELL_GAP
    bar_top, bar_height = LABEL_TOP + CELL_GAP, grid_height - 2 * CELL_GAP
    out[bar_top : bar_top + bar_height, bar_left : bar_left + COLOUR_BAR_WIDTH] = colour_bar(bar_height)
    picture = Image.fromarray(out)
    _label(picture, layers, heads, (cell_h, cell_w), (bar_left, bar_top, bar_height))
    return np.asarray(picture)


def colour_bar(height: int) -> np.ndarray:
    """uint8 (height, COLOUR_BAR_WIDTH, 3): the colour map from 1 (top row) to 0 (bottom row)."""
    from matplotlib import colormaps

    values = np.linspace(1.0, 0.0, height)[:, None].repeat(COLOUR_BAR_WIDTH, axis=1)
    return np.round(colormaps[COLORMAP](values)[..., :3] * 255.0).astype(np.uint8)


def _label(picture: Image.Image, layers: int, heads: int, cell: tuple[int, int], bar: tuple[int, int, int]) -> None:
    from PIL import ImageDraw, ImageFont

    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    (cell_h, cell_w), (bar_left, bar_top, bar_height) = cell, bar
    for layer in range(layers):
        middle = LABEL_TOP + CELL_GAP + layer * (cell_h + CELL_GAP) + cell_h // 2
        draw.text((LABEL_LEFT - 4, middle), f"L{layer}", fill=TEXT, font=font, anchor="rm")
    for head in range(heads):
        centre = LABEL_LEFT + CELL_GAP + head * (cell_w + CELL_GAP) + cell_w // 2
        draw.text((centre, LABEL_TOP - 3), f"H{head}", fill=TEXT, font=font, anchor="mb")
    text_left = bar_left + COLOUR_BAR_WIDTH + 3
    draw.text((text_left, bar_top), "max", fill=TEXT, font=font, anchor="lt")
    draw.text((text_left, bar_top + bar_height), "min", fill=TEXT, font=font, anchor="lb")


# -- writing ------------------------------------------------------------------


def output_paths(images: Sequence[str], out_dir: str) -> list[tuple[str, str, str]]:
    """(rollout .npy, rollout .png, heads .png) per image; two images may not share a file stem."""
    stems: dict[str, str] = {}
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ConfigError(f"images {stems[stem]} and {path} share the name '{stem}': their maps would overwrite "
                              "each other")
        stems[stem] = path
    return [tuple(os.path.join(out_dir, stem + suffix) for suffix in ("_rollout.npy", "_rollout.png", "_heads.png"))
            for stem in stems]


def check_options(head_fusion: str, discard_ratio: float, batch_size: int) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"--head-fusion {head_fusion!r} is not one of {HEAD_FUSIONS}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"--discard-ratio must be in [0, 1), got {discard_ratio}")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")


def prepare_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"output directory {out_dir} exists as a file")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create output directory {out_dir}: {error.strerror}") from None


def write_attention_maps(
    config: ViTConfig,
    params: dict,
    images: Sequence[str],
    out_dir: str,
    crop_fraction: float = 1.0,
    framework: str = "jax",
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> list[tuple[str, str, str]]:
    """Write each image's rollout (.npy, overlay .png) and per-head grid into `out_dir`; return the paths.

    Every image is decoded before anything is written, so a bad file leaves no output.
    """
    check_options(head_fusion, discard_ratio, batch_size)
    outputs = output_paths(images, out_dir)
    inputs = np.stack(
        [decode_image_file(p, config.image_hw, config.pixel_mean, config.pixel_std, config.num_channels, crop_fraction)
         for p in images]
    )
    prepare_out_dir(out_dir)
    if not config.has_class_token:
        log(f"note: the model has no class token (classifier '{config.classifier}'): "
            "the rollout and the per-head maps are the mean of all rows")
    from vit_jax.formats.base import atomic_outputs

    forward = attention_forward(config, params, framework)
    prefix, grid = config.num_prefix_tokens, config.grid_size  # class token first: its row over the patches
    display = scaled_size(config.image_hw, MIN_DISPLAY)
    for start in range(0, len(images), batch_size):
        probs = forward(inputs[start : start + batch_size])
        rollouts = attention_rollout(probs, head_fusion, discard_ratio, prefix, grid)
        heads = head_maps(probs, prefix, grid)
        for i, (rollout, per_head) in enumerate(zip(rollouts, heads)):
            path = images[start + i]
            view = model_view(path, config, crop_fraction, display)
            with atomic_outputs(*outputs[start + i], overwrite=True) as (npy, overlay, grid_png):  # in its --out-dir
                with open(npy, "wb") as f:
                    np.save(f, rollout)
                Image.fromarray(heat_overlay(view, rollout)).save(overlay, format="PNG")
                Image.fromarray(heads_picture(view, per_head)).save(grid_png, format="PNG")
            log(f"{path}: {', '.join(outputs[start + i])}")
    return outputs


# -- command line -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vit_jax.attention_map",
        description="Write the attention rollout (array and overlay) and per-head attention maps of a ViT for image "
                    "files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a training run directory or any weights file load_pretrained reads")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files (any format PIL reads; grey and RGBA are converted)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    parser.add_argument("--step", type=int, default=None,
                        help="run directory only: checkpoint step (default: the best, else the latest)")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="jax",
                        help="compute the attention with the Flax model or the torch twin")
    parser.add_argument("--head-fusion", choices=HEAD_FUSIONS, default="mean",
                        help="how each layer's heads are combined in the rollout")
    parser.add_argument("--discard-ratio", type=float, default=0.0,
                        help="fraction of each layer's fused attention entries zeroed, lowest first (the class token's "
                             "attention to itself is kept)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vit_jax.formats import ConversionError

    try:
        # Bad options and name clashes are reported before the model loads.
        check_options(args.head_fusion, args.discard_ratio, args.batch_size)
        output_paths(args.images, args.out)
        config, params, crop_fraction = load_checkpoint(args.checkpoint, args.step)
        write_attention_maps(config, params, args.images, args.out, crop_fraction, args.framework,
                             args.head_fusion, args.discard_ratio, args.batch_size)
    except (ConfigError, DataError, CheckpointError, ConversionError) as error:
        print(f"attention_map: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
