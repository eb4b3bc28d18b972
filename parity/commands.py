"""Entry points of the installed commands vit-convert and vit-report ([project.scripts]).

The same commands as `python -m parity convert` and `python -m parity report`.
"""

from __future__ import annotations

import sys

from vit_jax.training import cli


def convert() -> None:
    """vit-convert: weight conversion between checkpoint formats."""
    cli.install("vit-convert")
    from parity.convert_cli import main

    cli.exit(main(sys.argv[1:]))


def report() -> None:
    """vit-report: the layer-by-layer JAX vs PyTorch parity report."""
    cli.install("vit-report")
    from parity.report_cli import main

    cli.exit(main(sys.argv[1:]))
