"""Helpers for the conversion CLI's tests: run it in-process, and check that a refused conversion fails
cleanly (one error line, nothing written)."""

from __future__ import annotations

import os
from pathlib import Path

from parity.convert_cli import main


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def assert_fails_cleanly(argv, capsys, *expected_fragments):
    """CLI exits 2 with one error line naming the fragments; the destination directory gains nothing."""
    out_dir = Path(argv[1]).parent
    before = sorted(os.listdir(out_dir))
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    for fragment in expected_fragments:
        assert fragment in error_lines[0], (fragment, error_lines[0])
    assert sorted(os.listdir(out_dir)) == before  # no output, no temporary left behind
    return error_lines[0]
