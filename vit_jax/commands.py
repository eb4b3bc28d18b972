"""Entry points of the installed commands vit-train, vit-predict and vit-attention ([project.scripts]).

Each sets up the process as `python -m` would (one-line warnings; Ctrl-C and
SIGTERM end it with 130 / 143) before importing its command, so that an
interrupt during the imports already ends it cleanly. parity.commands has
vit-convert and vit-report.
"""

from __future__ import annotations

from vit_jax.training import cli


def train() -> None:
    """vit-train: the same command as `python train.py` (and `python -m vit_jax.train_cli`)."""
    cli.install("vit-train")
    from vit_jax.train_cli import main

    cli.exit(main(prog="vit-train"))


def predict() -> None:
    """vit-predict: `python train.py predict` (and `python -m vit_jax.predict`)."""
    cli.install("vit-predict")
    from vit_jax.predict import main

    cli.exit(main())


def attention() -> None:
    """vit-attention: attention rollout and per-head maps (`python -m vit_jax.attention_map`)."""
    cli.install("vit-attention")
    from vit_jax.attention_map import main

    cli.exit(main())
