"""convert's check against the source library: the Flax model of a conversion against the library the
checkpoint came from (reading) and against the library that loads the written file (writing).

Both sides run in float32 on the same seeded inputs (random pixels through the config's normalisation);
the output must agree within the float32 logits bound of the parity report, per input. The first input
whose output diverges is named, and the conversion writes nothing. Where no library model can be built
(not installed, a format with none) one line says so and the conversion goes on.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from parity.inputs import random_images
from parity.source_models import LIBRARIES, LibraryMissing, SourceModel, import_library, run, source_model
from parity.tolerances import TOLERANCES
from vit_jax.config import ViTConfig
from vit_jax.formats import ConversionError
from vit_jax.model import VisionTransformer

NUM_INPUTS = 2
SEED = 0
BOUND = TOLERANCES["float32"].logits.max_rel_l2  # the float32 bound on a model's output


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_inputs(config: ViTConfig) -> np.ndarray:
    return random_images(config, NUM_INPUTS, np.random.default_rng(SEED))


@functools.lru_cache(maxsize=8)
def _compiled_apply(config: ViTConfig):
    """One compiled forward per config: conversions of one architecture (a test suite's) share it."""
    model = VisionTransformer(config)
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


def flax_output(config: ViTConfig, params, images: np.ndarray) -> np.ndarray:
    return np.asarray(_compiled_apply(config.replace(dtype="float32", param_dtype="float32"))(params, images))


def compare(direction: str, source: SourceModel, config: ViTConfig, params, where: Path) -> str:
    """The check's line, e.g. 'read checked against timm 1.0.31: rel L2 4.9e-07 on 2 inputs'; raises
    ConversionError naming the first diverging output when the two differ by more than float32 rounding."""
    images = check_inputs(config)
    want = run(source, images)
    got = flax_output(config, params, images)
    if got.shape != want.shape:
        raise ConversionError(f"{where}: {direction} differs from {source.library}: its output '{source.output}' "
                              f"has shape {want.shape}, the Flax model's {got.shape}; nothing was written")
    for i in range(len(images)):
        rel = _rel_l2(got[i], want[i])
        if not rel <= BOUND:
            raise ConversionError(
                f"{where}: {direction} differs from {source.library}: output '{source.output}' of input {i} is "
                f"{rel:.2e} rel L2 from the Flax model's (float32 bound {BOUND:g}); nothing was written")
    return f"{direction} checked against {source.library}: rel L2 {_rel_l2(got, want):.1e} on {len(images)} inputs"


def missing_library(format: str) -> str | None:
    """The note for a format whose library cannot be imported here (checked before anything is read for it)."""
    try:
        import_library(LIBRARIES[format])
    except LibraryMissing as note:
        return str(note)
    return None


def check(direction: str, path: Path, format: str, config: ViTConfig, params, where: Path) -> str | None:
    """One direction's line (a figure, or a note saying why it was not checked); None for a format that has
    no source library (this project's own Flax formats)."""
    if format not in LIBRARIES:
        return None
    try:
        source = source_model(Path(path), format, config)
    except LibraryMissing as note:
        return f"{direction}: {note}"
    except ConversionError:
        raise
    except Exception as e:  # the library refuses the file or its config: a failure, not a note
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        which = "source" if direction == "reading" else "written"
        raise ConversionError(f"{where}: {LIBRARIES[format]} cannot load the {which} model "
                              f"({type(e).__name__}: {reason}); nothing was written") from None
    return compare(direction, source, config, params, where)
