"""A Hugging Face hub cache written by hand, as huggingface_hub lays it out, so that `hf-hub:` names resolve offline.

    <cache>/models--ORG--NAME/snapshots/<commit>/<files>
    <cache>/models--ORG--NAME/refs/main            holding the commit of `main`

huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported: `use_cache` sets the
environment (for subprocesses) and its constants (for this process).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def add_snapshot(cache: Path, repo_id: str, files_from: Path, main: bool = True) -> str:
    """Copy the files of `files_from` in as one revision of `repo_id`; its commit hash (main's if `main`)."""
    commit = hashlib.sha1(f"{repo_id}:{sorted(p.name for p in files_from.iterdir())}:{files_from}".encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files_from, repo / "snapshots" / commit)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return commit


def use_cache(monkeypatch, cache: Path) -> None:
    """Point huggingface_hub at `cache`, offline, in this process and in the subprocesses it starts."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
