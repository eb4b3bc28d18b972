"""Top-k labels for image files from a training run's checkpoint, or from any weights file.

    python train.py predict --checkpoint runs/NAME img1.png img2.jpg
    python -m vit_jax.predict --checkpoint runs/NAME --top-k 3 img1.png
    python train.py predict --checkpoint digits.safetensors img1.png   # any file load_pretrained reads

Images go through the run's evaluation transform (resize, center crop,
normalisation), so predictions match what `--eval-only` measures. The
checkpoint is the best by eval accuracy, else the latest (`--step` picks
another); a damaged one is named in a warning and the newest intact one used.
A weights file's images are resized to its model's resolution (no crop) and
normalised with its pixel mean/std; its classes are numbered.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from vit_jax.config import ConfigError, ViTConfig
from vit_jax.data import DataError
from vit_jax.data.preprocess import config_transform, run_transform, source_transform, transform_file
from vit_jax.formats import ConversionError
from vit_jax.formats.training_run import locate, read_run_config
from vit_jax.help_format import DefaultsHelpFormatter
from vit_jax.pretrained import load_pretrained, load_run
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
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a run's --workdir (holds config.json and checkpoints/), or any weights file "
                             "vit_jax.load_pretrained reads (normalisation from its config JSON if beside it)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the best by eval accuracy, else the latest; a damaged default "
                             "is skipped with a warning for the newest intact step)")
    parser.add_argument("--top-k", type=int, default=5, help="labels to print per image")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--attention-map", metavar="DIR", default=None,
                        help="also write each image's attention rollout and per-head maps into DIR "
                             "(vit_jax.attention_map)")
    return parser


def load_model(path: str, step: int | None) -> tuple[ViTConfig, dict, list[str] | None, float, str]:
    """(model, params, class names, eval crop fraction, what was read) of a run directory or any weights file.

    A weights file is read by `load_pretrained` (its config JSON, if beside it, gives numerics and pixel
    mean/std); its classes are numbered and images are resized to the model's resolution without a crop.
    """
    if locate(path) == (Path(path), None):  # a run's --workdir
        model, params, run, step = load_run(path, step)
        names = run["data"].get("class_names")
        read = f"checkpoint step {step} of {os.path.abspath(path)}"
        return model, params, names, run.get("eval_crop_fraction", 1.0), read
    if step is not None:
        raise ConfigError(f"--step applies to a training run directory; {path} is not one")
    try:
        model, params = load_pretrained(path)
    except ConversionError as error:
        raise CheckpointError(str(error)) from None
    if not model.num_classes:
        raise ConfigError(f"{path} has no classification head (the model outputs features); predict needs one")
    return model, params, None, 1.0, f"weights {os.path.abspath(path)}"


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
        model, params, class_names, crop_fraction, source = load_model(args.checkpoint, args.step)
        class_names = class_names or [str(i) for i in range(model.num_classes)]
        # a run's own eval transform; a timm or transformers checkpoint's own preprocessing; else the config's
        run = locate(args.checkpoint)
        transform = (run_transform(read_run_config(run[0])) if run else
                     source_transform(args.checkpoint) or config_transform(model, crop_fraction))
        images = np.stack([transform_file(transform, path, model.num_channels) for path in args.images])
        if args.attention_map:
            from vit_jax.attention_map import output_paths, prepare_out_dir

            output_paths(args.images, args.attention_map)
            prepare_out_dir(args.attention_map)
    except (ConfigError, DataError, CheckpointError) as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 1
    probs = predict(model, params, images, args.batch_size)
    k = min(args.top_k, probs.shape[1])
    print(source)
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
