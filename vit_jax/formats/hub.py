"""Checkpoint names on the Hugging Face Hub, `hf-hub:ORG/NAME[@REVISION]`, resolved to a local directory.

    resolve_checkpoint("hf-hub:timm/vit_base_patch16_224.augreg_in21k")   -> the snapshot directory
    resolve_checkpoint("hf-hub:google/vit-base-patch16-224@<commit>")     -> that revision's directory

The download is huggingface_hub's `snapshot_download`, so its cache (HF_HUB_CACHE, HF_HOME), offline mode
(HF_HUB_OFFLINE: the cache only), token (HF_TOKEN or `hf auth login`) and revision pinning apply as they do for
timm and transformers; the directory is then read as a local one is. Any other path is returned unchanged.
This is the one place a checkpoint name becomes a path: every reader (load_pretrained, convert, report, predict,
train --init) goes through `open_checkpoint`, which calls it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vit_jax.formats.base import ConversionError

HUB_PREFIX = "hf-hub:"
# What the readers use: weights, the configs, and the preprocessing of load_transform; not other frameworks'
# copies of the weights (TensorFlow, ONNX, Core ML...), which can be larger than the model itself.
_PATTERNS = ["*.json", "*.safetensors", "*.npz", "*.msgpack", "*.bin", "*.pth", "*.pt"]
_SKIPPED = ["*.onnx", "*.h5", "*.tflite", "*.ot", "onnx/*", "openvino/*", "coreml/*", "flax_model.msgpack"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_name(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """("ORG/NAME", revision or None) of `hf-hub:ORG/NAME[@REVISION]`; a ConversionError if it is not one."""
    repo_id, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
    if not _REPO_ID.match(repo_id) or (name.count("@") and not revision):
        raise ConversionError(f"{name!r} is not a hub name: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo_id, revision or None


def resolve_checkpoint(path: str | os.PathLike) -> str | os.PathLike:
    """The local directory of a hub name (downloaded into huggingface_hub's cache if needed); else `path` itself."""
    if not is_hub_name(path):
        return path
    repo_id, revision = parse_hub_name(path)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ConversionError(f"{path}: hub names need huggingface_hub (pip install huggingface_hub)") from None
    try:
        directory = snapshot_download(repo_id, revision=revision, allow_patterns=_PATTERNS,
                                      ignore_patterns=_SKIPPED)
    except GatedRepoError:
        raise ConversionError(f"{path}: the repository is gated; accept its terms on the Hub and set HF_TOKEN "
                              f"(or run `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ConversionError(f"{path}: the repository has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise ConversionError(f"{path}: no such repository on the Hub (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        raise ConversionError(f"{path}: not in the Hugging Face cache and the Hub cannot be reached (HF_HUB_OFFLINE "
                              f"is set, or no network); expected it under {_cache_dir()}") from None
    return Path(directory)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
