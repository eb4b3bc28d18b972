"""No function over MAX_LINES lines in the library, the CLIs or train.py: long ones are split by meaning."""

from __future__ import annotations

import ast
from pathlib import Path

from train_runs import REPO

MAX_LINES = 80
CHECKED = ("vit_jax", "vit_torch_ref", "parity", "train.py")


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def _lengths() -> dict[tuple[str, str], int]:
    repo = Path(REPO)
    files = [repo / "train.py"] + [p for d in CHECKED[:-1] for p in sorted((repo / d).rglob("*.py"))]
    lengths = {}
    for path in files:
        for name, node in _functions(ast.parse(path.read_text(), str(path))):
            lengths[(path.relative_to(repo).as_posix(), name)] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_80_lines():
    lengths = _lengths()
    long = {key: n for key, n in lengths.items() if n > MAX_LINES}
    assert not long, f"functions over {MAX_LINES} lines (split them by meaning): {long}"

