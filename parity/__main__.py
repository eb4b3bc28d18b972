"""`python -m parity {convert,report} ...`: the parity command line."""

from __future__ import annotations

import sys

COMMANDS = {
    "convert": ("parity.convert_cli", "convert weights between checkpoint formats"),
    "report": ("parity.report_cli", "layer-by-layer JAX vs PyTorch parity report"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: python -m parity COMMAND [options]", "", "commands:"]
        lines += [f"  {name:<10}{help_}" for name, (_, help_) in COMMANDS.items()]
        lines += ["", "Run 'python -m parity COMMAND --help' for a command's options."]
        unknown = argv and argv[0] not in ("-h", "--help")
        print(("error: unknown command %r\n\n" % argv[0] if unknown else "") + "\n".join(lines),
              file=sys.stderr if unknown or not argv else sys.stdout)
        return 2 if unknown or not argv else 0
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    from vit_jax.training import cli  # one-line warnings; Ctrl-C / SIGTERM end the process with 130 / 143

    cli.install("python -m parity")
    cli.exit(main())
