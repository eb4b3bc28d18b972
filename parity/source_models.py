"""The source libraries' own models of a checkpoint: what each library builds from a file, and which output of
it the Flax model computes.

Which transformers class gives which output is a family fact (each family module's `transformers_outputs`,
vit_jax/families); the plain ViT's classes and which library reads each format are in the tables at the top. The
builders below them are generic: a timm hub directory is
`timm.create_model(architecture, pretrained=False, **model_args)` with `load_state_dict(strict=True)`, a
transformers directory is the class its config.json names in `architectures`, loaded with `from_pretrained`
and refused when any weight is missing, unexpected or re-initialised, a vit-pytorch file is `vit_pytorch.ViT`.
A load that leaves a weight at its initial value is an error, never a warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vit_jax.config import ViTConfig
from vit_jax.families import transformers_outputs
from vit_jax.formats import ConversionError

# -- the source libraries -----------------------------------------------------------------------------
# transformers class -> the output the Flax model gives (one of SOURCE_OUTPUTS): the plain ViT's, then every
# family's; a class absent here is not checked, with a note
TRANSFORMERS_OUTPUTS: dict[str, str] = {"ViTForImageClassification": "logits", "ViTModel": "pooler_or_class_token",
                                        **transformers_outputs()}
# which library computes each format's checkpoints (Flax formats have none but this project)
LIBRARIES = {"timm-hub": "timm", "torch": "timm", "hf": "transformers", "vit-pytorch": "vit-pytorch",
             "torchvision": "torchvision"}
MODULES = {"timm": "timm", "transformers": "transformers", "vit-pytorch": "vit_pytorch", "torchvision": "torchvision"}
INSTALL = {"timm": "pip install timm", "transformers": "pip install transformers",
           "vit-pytorch": "pip install vit-pytorch", "torchvision": "pip install torchvision"}


def _image_features(model, x):
    """A two-tower model's image features (transformers 5 returns an output object, 4.x the tensor)."""
    output = model.get_image_features(pixel_values=x)
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _pooler_or_class_token(model, x):
    """A ViTModel-style class: the pooler when it has one, else the final-norm class token."""
    out = model(pixel_values=x)
    return out.pooler_output if getattr(model, "pooler", None) is not None else out.last_hidden_state[:, 0]


# the outputs that are not an attribute of the model's output
_COMPUTED_OUTPUTS: dict[str, Callable] = {"pooler_or_class_token": _pooler_or_class_token,
                                          "image_features": _image_features}


# -- generic builders -----------------------------------------------------------------------------------
class LibraryMissing(Exception):
    """The source library cannot be imported: the check is skipped with a one-line note."""


@dataclasses.dataclass
class SourceModel:
    library: str  # "timm 1.0.31"
    module: torch.nn.Module  # in eval mode
    output: str  # the output compared, e.g. "logits"
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]  # (this module or a copy, NCHW pixels) -> it

    def run(self, x: torch.Tensor, module: torch.nn.Module | None = None) -> torch.Tensor:
        return self.forward(self.module if module is None else module, x)


def import_library(library: str):
    try:
        module = importlib.import_module(MODULES[library])
    except Exception as e:  # ImportError, or a broken dependency (timm without torchvision)
        raise LibraryMissing(f"not checked against {library}: it is not importable ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); {INSTALL[library]} to check") from None
    return module


def _versioned(library: str, module) -> str:
    """'timm 1.0.31': the installed distribution's version (vit_pytorch has no __version__)."""
    try:
        return f"{library} {importlib.metadata.version(library)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{library} {getattr(module, '__version__', '?')}"


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors" or _is_safetensors(path):
        import safetensors.torch

        return safetensors.torch.load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_safetensors(path: Path) -> bool:
    """A temporary output has no extension: safetensors starts with an 8-byte header length, then '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _strict_load(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path, library: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise ConversionError(f"{where}: {library} loads it with missing keys {missing[:4]} and unexpected keys "
                              f"{unexpected[:4]}; refusing a model whose weights would stay at their init")


def _plain(library: str, module: torch.nn.Module) -> SourceModel:
    return SourceModel(library, module.eval(), "output", lambda m, x: m(x))


def timm_hub_model(path: Path) -> SourceModel:
    timm = import_library("timm")
    data = json.loads((path / "config.json").read_text())
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise ConversionError(f"{path}: no model.safetensors or pytorch_model.bin for timm to load")
    model = timm.create_model(data["architecture"], pretrained=False, **(data.get("model_args") or {}))
    _strict_load(model, _state_dict(weights), path, "timm")
    return _plain(_versioned("timm", timm), model)


def timm_file_model(path: Path, config: ViTConfig) -> SourceModel:
    """A timm-named state dict: the timm architecture and model_args the timm-hub writer names for the config."""
    timm = import_library("timm")
    from vit_jax.formats.renames import RenameTable
    from vit_jax.formats.timm_archs import UnknownArchitecture, own_names
    from vit_jax.formats.timm_hub import check_expressible, hub_config

    try:
        check_expressible(config)
        hub = hub_config(config)
    except (ConversionError, UnknownArchitecture) as e:
        raise LibraryMissing(f"not checked against timm: no timm architecture computes this model ({e})") from None
    arch, args = hub["architecture"], hub["model_args"]
    model = timm.create_model(arch, pretrained=False, **args)
    state = _state_dict(path)
    names = own_names(arch, args)
    if names is not None:  # the torch format keeps the project's timm naming; some timm classes name their own
        state = RenameTable(names).rename_to_other(state)
    _strict_load(model, state, path, "timm")
    return _plain(_versioned("timm", timm), model)


def transformers_model(path: Path, eager_attention: bool = False) -> SourceModel:
    """`eager_attention`: transformers' explicit attention, which returns its probabilities (for the report)."""
    transformers = import_library("transformers")
    data = json.loads((path / "config.json").read_text())
    name = (data.get("architectures") or [None])[0]
    if name not in TRANSFORMERS_OUTPUTS:
        raise LibraryMissing(f"not checked against transformers: no source check for class {name!r} "
                             f"(checked: {', '.join(TRANSFORMERS_OUTPUTS)})")
    transformers.utils.logging.disable_progress_bar()
    extra = {"attn_implementation": "eager"} if eager_attention else {}
    model, info = getattr(transformers, name).from_pretrained(str(path), output_loading_info=True, **extra)
    problems = {k: list(v)[:4] for k, v in info.items() if v}
    if problems:
        raise ConversionError(f"{path}: transformers {name}.from_pretrained leaves weights unloaded: {problems}")
    model = model.float().eval()
    output = TRANSFORMERS_OUTPUTS[name]
    if output in _COMPUTED_OUTPUTS:
        return SourceModel(_versioned("transformers", transformers), model, name, _COMPUTED_OUTPUTS[output])
    return SourceModel(_versioned("transformers", transformers), model, output,
                       lambda m, x: getattr(m(pixel_values=x), output))


def vit_pytorch_model(path: Path, config: ViTConfig) -> SourceModel:
    vit_pytorch = import_library("vit-pytorch")
    from vit_jax.formats.vit_pytorch import vit_kwargs

    model = vit_pytorch.ViT(**vit_kwargs(config))
    _strict_load(model, _state_dict(path), path, "vit-pytorch")
    return _plain(_versioned("vit-pytorch", vit_pytorch), model)


def torchvision_model(path: Path, config: ViTConfig) -> SourceModel:
    torchvision = import_library("torchvision")
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=config.image_hw[0], patch_size=config.patch_hw[0],
                              num_layers=config.num_layers, num_heads=config.num_heads,
                              hidden_dim=config.hidden_size, mlp_dim=config.mlp_dim,
                              num_classes=config.num_classes)
    _strict_load(model, _state_dict(path), path, "torchvision")
    return _plain(_versioned("torchvision", torchvision), model)


def source_model(path: Path, format: str, config: ViTConfig, eager_attention: bool = False) -> SourceModel:
    """The library's own model of the checkpoint at `path` (written in `format`), loaded strictly.

    Raises LibraryMissing when no library model can be built here (not installed, or a case not covered)."""
    if format == "timm-hub":
        return timm_hub_model(path)
    if format == "hf":
        if not path.is_dir():
            raise LibraryMissing("not checked against transformers: a weights file without its config.json")
        return transformers_model(path, eager_attention)
    if format == "torch":
        return timm_file_model(path, config)
    if format == "vit-pytorch":
        return vit_pytorch_model(path, config)
    if format == "torchvision":
        return torchvision_model(path, config)
    raise LibraryMissing(f"no source library for {format}")


def run(model: SourceModel, images: np.ndarray) -> np.ndarray:
    """The source's output on NHWC float32 `images`."""
    with torch.no_grad():
        return model.run(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).float().numpy()
