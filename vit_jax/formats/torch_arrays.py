"""NumPy <-> torch tensors, bfloat16 included (NumPy's comes from ml_dtypes)."""

from __future__ import annotations

from typing import Any, Mapping

import ml_dtypes
import numpy as np
import torch


def to_torch(array: Any) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype == ml_dtypes.bfloat16:  # torch.from_numpy has no bfloat16
        return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def state_dict_to_torch(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: to_torch(v) for k, v in state_dict.items()}


def state_dict_to_numpy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: to_numpy(v) for k, v in state_dict.items()}
