"""Convert ViT weights between checkpoint formats: read through vit_jax.formats, write atomically.

    convert("ViT-B_16.npz", "vit_b16.safetensors")          # file -> file (+ config JSON beside it)

Reading (any format -> Flax- or timm-named NumPy tensors) is `vit_jax.formats.read`; this module
adds the destination side. Peak memory is about two copies of the weights (the converted tensors,
and the serialised file while it is written).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from parity import source_check
from parity.source_models import LIBRARIES
from vit_jax.config import ViTConfig
from vit_jax.formats import FORMATS, ConversionError, config_sidecar, flax_ckpt, hf, timm_hub, torch_sd
from vit_jax.formats.base import atomic_outputs, check_output_path, replacing_marker
from vit_jax.formats.hub import resolve_checkpoint
from vit_jax.formats.mapping import unflatten
from vit_jax.formats.read import Progress, check_format, describe, read_flax_params, read_tensors, target_format
from vit_jax.training.orbax_output import quiet_failures


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    config: ViTConfig
    source_format: str
    target_format: str
    output: Path
    config_path: Path
    num_tensors: int
    # what the check against the source library found, one line per direction (a figure, or why not)
    checks: tuple[str, ...] = ()


def write_orbax(path: str | Path, flat: dict[str, np.ndarray], config=None, like=None) -> None:
    """A nested param tree as an orbax checkpoint directory (the one writer that needs JAX and orbax)."""
    import jax
    import orbax.checkpoint as ocp

    # Orbax copies NumPy leaves into its write buffers; jax arrays (which on CPU can share the
    # NumPy buffer) it writes from directly: measured 1.75 vs 2.7 copies of ViT-L/16 at the peak.
    tree = unflatten({key: jax.device_put(flat.pop(key)) for key in list(flat)})
    with quiet_failures():
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(Path(path).absolute(), tree)
        checkpointer.wait_until_finished()


def _check_reading(src, source_format: str, reading, image_size, resolved: ViTConfig,
                   progress: Progress | None) -> tuple[str | None, Any]:
    """The reading check's line, and its Flax params where they are the result's too (else None)."""
    missing = source_check.missing_library(source_format)
    if missing:  # nothing more is read for a check that cannot run
        return f"reading: {missing}", None
    if progress:
        progress(f"checking {src} against {LIBRARIES[source_format]}")
    try:
        source_config, params = reading()  # at the source's own size and head: the function it computes
    except ConversionError:
        if image_size is None:
            raise
        source_config, params = reading(image_size=image_size)  # the size SRC's grid needs stated
    line = source_check.check("reading", resolve_checkpoint(src), source_format, source_config, params, Path(src))
    return line, params if source_config == resolved else None


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    from_format: str | None = None,
    to_format: str | None = None,
    config: ViTConfig | str | os.PathLike | None = None,
    image_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    progress: Progress | None = None,
    step: int | None = None,
    allow_nonfinite: bool = False,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> ConversionResult:
    """Convert the checkpoint `src` to `dst`, writing the ViTConfig JSON beside `dst`.

    Nothing appears at `dst` unless the whole conversion succeeds; the weights
    and their config JSON are replaced as one unit (see atomic_outputs), and
    only with `overwrite` when either exists already.
    `overrides` states config fields outright (`--set num_heads=8`).
    `verify` checks the Flax model against the source library's model of `src`
    and of the written file, where that library is importable (parity.source_check);
    a difference above float32 rounding raises ConversionError and writes nothing.
    """
    check_format(from_format, "--from")
    check_format(to_format, "--to")
    dst = Path(dst)
    to_format = to_format or target_format(dst)
    if Path(src).resolve() == dst.resolve():
        raise ConversionError(f"{dst}: destination is the source; choose another path")
    module, naming = FORMATS[to_format]
    # flax and hf targets are directories unless DST names a file container
    as_dir = (to_format == flax_ckpt.FORMAT and dst.suffix != ".msgpack") or (
        to_format == hf.FORMAT and dst.suffix not in torch_sd.EXTENSIONS
    ) or to_format == timm_hub.FORMAT
    sidecar = config_sidecar(dst, is_dir=as_dir)
    targets = (dst,) if as_dir else (dst, sidecar)
    for target in targets:  # before the (long) read; atomic_outputs checks again before writing
        if not replacing_marker(dst).is_file():  # else a killed write's renames come first, then the check
            check_output_path(target, overwrite)
    check = getattr(module, "check_expressible", None)
    resolved, tensors, source = read_tensors(src, naming, from_format, config, image_size, num_classes, progress,
                                             check, step, allow_nonfinite, overrides)
    count = len(tensors)
    checks: list[str] = []
    reading = functools.partial(read_flax_params, src, source.format, config, step=step,
                                allow_nonfinite=allow_nonfinite, overrides=overrides)
    flax_params = None
    if verify and source.format in LIBRARIES:
        line, flax_params = _check_reading(src, source.format, reading, image_size, resolved, progress)
        checks.append(line)
    if progress:
        progress(f"writing {dst} ({to_format}): {describe(resolved)}")
    try:
        with atomic_outputs(*targets, overwrite=overwrite) as temps:
            write = write_orbax if as_dir and to_format == flax_ckpt.FORMAT else module.write
            write(temps[0], tensors, resolved, dst)
            config_file = temps[0] / sidecar.name if as_dir else temps[1]
            config_file.write_text(resolved.to_json())
            missing = verify and to_format in LIBRARIES and source_check.missing_library(to_format)
            if missing:
                checks.append(f"writing: {missing}")
            elif verify and to_format in LIBRARIES:  # the written file, loaded by its library, before it is at DST
                if flax_params is None:
                    flax_params = reading(image_size=image_size, num_classes=num_classes)[1]
                checks.append(source_check.check("writing", temps[0], to_format, resolved, flax_params, dst))
    except (ConversionError, KeyboardInterrupt):
        raise
    except Exception as e:  # a full disk surfaces as OSError, or as each writer's own error type
        first = str(e).strip().splitlines()
        reason = first[0][:300] if first else ""
        raise ConversionError(f"{dst}: cannot write ({type(e).__name__}: {reason}); "
                              f"nothing was written there") from None
    if progress:
        progress(f"wrote {dst} and {sidecar}")
    return ConversionResult(resolved, source.format, to_format, dst, sidecar, count,
                            tuple(line for line in checks if line))
