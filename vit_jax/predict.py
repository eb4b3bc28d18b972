"""Top-k labels for image files from a training run's checkpoint.

    python train.py predict --checkpoint runs/NAME img1.png img2.jpg
    python -m vit_jax.predict --checkpoint runs/NAME --top-k 3 img1.png

Images go through the run's evaluation transform (resize, center crop,
normalisation), so predictions match what `--eval-only` measures. The
checkpoint is the best by eval accuracy, else the latest (`--step` picks
another); a damaged one is named in a warning and the newest intact one used.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import DataError, decode_image_file
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.pretrained import load_run
from vit_jax.training.checkpoint import CheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py predict",
        description="Print the top-k labels of a trained ViT for each image file.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="+",
                        help="image files (any format PIL reads; grey and RGBA are converted; FIFOs, devices and "
                             "other special files are refused)")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR",
                        help="a run's --workdir (holds config.json and checkpoints/)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the best by eval accuracy, else the latest; a damaged default "
                             "is skipped with a warning for the newest intact step)")
    parser.add_argument("--top-k", type=int, default=5, help="labels to print per image")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--attention-map", metavar="DIR", default=None,
                        help="also write each image's attention rollout and per-head maps into DIR "
                             "(vit_jax.attention_map)")
    return parser


def predict(model: ViTConfig, params: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities (N, classes) for normalised NHWC images."""
    import jax

    from vit_jax import VisionTransformer

    forward = jax.jit(lambda p, x: jax.nn.softmax(VisionTransformer(model).apply({"params": p}, x).astype("float32")))
    out = [np.asarray(forward(params, images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.top_k <= 0 or args.batch_size <= 0:
            raise ConfigError("--top-k and --batch-size must be positive")
        model, params, run, step = load_run(args.checkpoint, args.step)
        data = run["data"]
        class_names = data.get("class_names") or [str(i) for i in range(model.num_classes)]
        crop_fraction = run.get("eval_crop_fraction", 1.0)
        images = np.stack(
            [
                decode_image_file(path, model.image_hw, model.pixel_mean, model.pixel_std, model.num_channels,
                                  crop_fraction)
                for path in args.images
            ]
        )
        if args.attention_map:
            from vit_jax.attention_map import output_paths, prepare_out_dir

            output_paths(args.images, args.attention_map)
            prepare_out_dir(args.attention_map)
    except (ConfigError, DataError, CheckpointError) as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 1
    probs = predict(model, params, images, args.batch_size)
    k = min(args.top_k, probs.shape[1])
    print(f"checkpoint step {step} of {os.path.abspath(args.checkpoint)}")
    for path, p in zip(args.images, probs):
        top = np.argsort(-p)[:k]
        print(f"{path}: " + ", ".join(f"{class_names[i]} {p[i]:.3f}" for i in top))
    if args.attention_map:
        from vit_jax.attention_map import write_attention_maps

        write_attention_maps(model, params, args.images, args.attention_map, crop_fraction, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    from vit_jax.training import cli

    cli.install("predict")
    cli.exit(main())
