"""The training command: `python train.py`, `vit-train` or `python -m vit_jax.train_cli` (same options).

    vit-train                              # small ViT from scratch on scikit-learn's digits
    vit-train --help                       # every option
    vit-train --resume --workdir runs/NAME
    vit-train predict --checkpoint runs/NAME image.png ...

Parses the flags, calls the library (vit_jax.training.runner.run) and maps
its errors to one line on stderr and exit status 1; Ctrl-C, SIGTERM, SIGHUP
or SIGQUIT end the run within seconds with exit status 128 + the signal.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # first, so that Ctrl-C during the imports below already ends the run cleanly
    from vit_jax.training import cli

    cli.install("vit-train")

from vit_jax.training import cli
from vit_jax.training.api import TRAINING_ERRORS
from vit_jax.training.config import parse_args
from vit_jax.training.runner import run


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """The command's exit status for `argv` (default: sys.argv[1:]); `prog` starts its error lines."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        from vit_jax.predict import main as predict_main

        return predict_main(argv[1:])
    try:
        with cli.interruptible():
            run(parse_args(argv, prog))
            return 0
    except TRAINING_ERRORS as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        cli.report_interrupt(prog)
        return getattr(interrupt, "exit_code", 130)


if __name__ == "__main__":
    cli.exit(main(prog="vit-train"))
