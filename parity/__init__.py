"""Weight mapping, conversion and parity checks between vit_jax and vit_torch_ref."""

from vit_jax.formats.mapping import (  # the mapping table, re-exported for parity's users
    MappingError,
    Rule,
    expected_flax_shapes,
    expected_torch_shapes,
    flatten,
    flax_to_torch,
    param_rules,
    torch_to_flax,
    unflatten,
)
from vit_jax.formats.torch_arrays import state_dict_to_numpy, state_dict_to_torch, to_numpy, to_torch
from vit_torch_ref.pretrained import from_flax_params


def torch_model_from_flax(params, config):
    """A `vit_torch_ref.VisionTransformer` (eval mode) holding `params` moved through the mapping."""
    return from_flax_params(params, config)


def flax_params_from_torch(model_or_state_dict, config):
    """Flax params (NumPy leaves) from a torch twin or a timm-named state dict."""
    state_dict = getattr(model_or_state_dict, "state_dict", lambda: model_or_state_dict)()
    return torch_to_flax(state_dict_to_numpy(state_dict), config)


__all__ = [
    "MappingError",
    "Rule",
    "expected_flax_shapes",
    "expected_torch_shapes",
    "flatten",
    "flax_params_from_torch",
    "flax_to_torch",
    "param_rules",
    "state_dict_to_numpy",
    "state_dict_to_torch",
    "to_numpy",
    "to_torch",
    "torch_model_from_flax",
    "torch_to_flax",
    "unflatten",
]
