"""Every command in the README's and docs/' shell blocks still exists and still parses.

Each `python train.py ...` or `python -m MODULE ...` line is run, all of them in one fresh
interpreter, up to the moment its argparse parser has accepted the arguments (a dry run: nothing
trains, converts or writes). A module that does not exist, a subcommand, flag or choice that is
gone, or a training-option combination `train.py` rejects fails the test. `pip` lines must name
extras that pyproject.toml defines, `pytest -m` lines registered markers, and every other program
must be one of the few external tools the docs mention on purpose.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# Programs the docs show for the reader's machine, not this project's: not run here.
EXTERNAL = {"gsutil", "wget", "apt-get", "tensorboard", "hf"}
# Modules that parallel branches add; a command naming one is skipped only while it is absent.
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_lines(page: Path) -> list[tuple[str, str]]:
    """(where, line) of every logical line in the page's shell code blocks, continuations joined."""
    lines, block, pending, start = [], None, "", 0
    for number, text in enumerate(page.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", text)
        if fence:
            block = None if block is not None else fence.group(1)
            continue
        if block not in SHELL_LANGUAGES:
            continue
        start = start or number
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        lines.append((f"{page.name}:{start}", pending + text))
        pending, start = "", 0
    return lines


def commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command: lines split at `&&`, comments and VAR=value prefixes dropped."""
    found = []
    for page in PAGES:
        for where, line in shell_lines(page):
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                argv, tokens = tokens[:cut], tokens[cut + 1 :]
                while argv and ENV_ASSIGNMENT.match(argv[0]):
                    argv = argv[1:]
                if argv:
                    found.append((where, argv))
    return found


# The installed commands ([project.scripts]): name -> "module:function".
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def python_target(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """('script', path, args), ('module', name, args) or ('entry', 'module:function', args), else None."""
    if argv[0] in SCRIPTS:
        return ("entry", SCRIPTS[argv[0]], argv[1:])
    if argv[0] not in ("python", "python3") or len(argv) < 2:
        return None
    if argv[1] == "-m" and len(argv) > 2:
        return ("module", argv[2], argv[3:])
    return ("script", argv[1], argv[2:])


ALL = commands()
CLI = [(where, python_target(argv)) for where,
       argv in ALL if python_target(argv) and python_target(argv)[1] != "pytest"]

# Runs each command's own main up to its argparse parse, then stops it (BaseException, so no
# `except Exception` in a CLI swallows it). train.py's options are also validated as TrainConfig.
DRIVER = r"""
import argparse, contextlib, io, json, os, runpy, sys

class Parsed(BaseException):
    def __init__(self, prog, namespace):
        self.prog, self.namespace = prog, namespace

parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
inside = []

def stop_after_parse_args(self, args=None, namespace=None):
    inside.append(1)
    try:
        result = parse_args(self, args, namespace)
    finally:
        inside.pop()
    raise Parsed(self.prog, result)

def stop_after_parse_known_args(self, args=None, namespace=None):
    result = parse_known_args(self, args, namespace)
    if inside:  # parse_args and subparsers call this on the way
        return result
    raise Parsed(self.prog, result[0])

argparse.ArgumentParser.parse_args = stop_after_parse_args
argparse.ArgumentParser.parse_known_args = stop_after_parse_known_args
results = []
for kind, target, args in json.load(sys.stdin):
    sys.argv = [target, *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            if kind == "script":
                runpy.run_path(os.path.join(os.getcwd(), target), run_name="__main__")
            elif kind == "entry":
                module, function = target.split(":")
                sys.argv[0] = module
                getattr(__import__(module, fromlist=[function]), function)()
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        results.append("ran to the end without parsing any arguments")
    except Parsed as parsed:
        if parsed.prog in ("train.py", "vit-train"):
            from vit_jax.training.config import config_from_dict
            values = {k: v for k, v in vars(parsed.namespace).items() if k != "config"}
            try:
                config_from_dict(values)
            except Exception as error:
                results.append(f"train.py rejects these options: {error}")
                continue
        results.append(None)
    except SystemExit as exit:  # --help exits 0; a usage error exits 2
        last = (err.getvalue().strip().splitlines() or [""])[-1]
        results.append(None if exit.code in (0, None) else f"exit status {exit.code}: {last}")
    except BaseException as error:
        results.append(f"{type(error).__name__}: {error}")
print(json.dumps(results))
"""

# A nonexistent module, flag and option combination: the check must reject each.
BROKEN = [
    ("module", "vit_jax.no_such_tool", []),
    ("script", "train.py", ["--no-such-flag"]),
    ("script", "train.py", ["--freeze-backbone"]),
    ("module", "parity", ["no-such-subcommand"]),
    ("entry", SCRIPTS["vit-train"], ["--freeze-backbone"]),
]


@pytest.fixture(scope="module")
def cli_results() -> dict[tuple, str | None]:
    runnable = [target for _, target in CLI]
    batch = [list(t) for t in dict.fromkeys((kind, name, tuple(args)) for kind, name, args in runnable + BROKEN)]
    run = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(batch), capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    return {(kind, name, tuple(args)): result for (kind, name, args), result in zip(batch, results)}


def test_readme_has_a_command_per_job():
    readme = [" ".join(argv) for where, argv in ALL if where.startswith("README.md")]
    for job in ("python train.py", "train.py predict", "--init", "parity convert", "parity report", "pytest",
                *SCRIPTS):
        assert any(job in command for command in readme), f"README.md shows no `{job}` command"


def test_every_command_is_a_known_program():
    unknown = [f"{where}: {' '.join(argv)}" for where, argv in ALL
               if not python_target(argv) and argv[0] not in EXTERNAL | {"pip", "pip3"}]
    assert not unknown, "commands the test cannot check (add a check or fix the command):\n" + "\n".join(unknown)


@pytest.mark.parametrize("where, target", CLI, ids=[f"{w} {t[1]} {' '.join(t[2])[:60]}" for w, t in CLI])
def test_command_parses(where, target, cli_results):
    kind, name, args = target
    assert cli_results[(kind, name, tuple(args))] is None, f"{where}: {cli_results[(kind, name, tuple(args))]}"


def test_the_check_rejects_broken_commands(cli_results):
    for kind, name, args in BROKEN:
        assert cli_results[(kind, name, tuple(args))], f"{name} {args} was accepted"


def test_pip_lines_name_real_extras():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for where, argv in ALL:
        if argv[0] in ("pip", "pip3"):
            assert argv[1] == "install", f"{where}: {argv}"
            for token in argv[2:]:
                named = re.fullmatch(r"\.\[([\w,-]+)\]", token)
                if named:
                    missing = set(named.group(1).split(",")) - extras
                    assert not missing, f"{where}: pyproject.toml has no extra {missing}"


def test_pytest_lines_name_registered_markers():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = {line.split(":")[0].strip() for line in config["markers"]}
    for where, argv in ALL:
        target = python_target(argv)
        if target and target[1] == "pytest" and "-m" in target[2]:
            expression = target[2][target[2].index("-m") + 1]
            names = set(re.findall(r"\w+", expression)) - {"and", "or", "not"}
            assert names <= markers, f"{where}: unregistered marker(s) {names - markers}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+\s+(.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


@pytest.mark.slow  # a ViT-B/16 init and forward, and a 40-step training of a tiny ViT: ~30-60 s on 2 cores
def test_readme_python_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training example writes its run directory under runs/
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    logits, inter = namespace["logits"], namespace["inter"]
    assert logits.shape == (2, 10) and inter["blocks.11.attn_probs"].shape == (2, 12, 197, 197)
    assert [f.shape for f in namespace["features"]] == [(2, 14, 14, 768)] * 4
