"""Tensors on the wire and on disk: safetensors bytes (deterministic for the same tensors)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save


class TensorFileError(ValueError):
    pass


def to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return _save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def from_bytes(data: bytes, *, what: str = "tensors") -> dict[str, torch.Tensor]:
    try:
        return dict(_load(data))
    except Exception as exc:  # safetensors raises its own error types; callers want one
        raise TensorFileError(f"{what} is not a valid safetensors file: {exc}") from exc


def load_dataset_bytes(data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """An owner's own data: safetensors with "x" (inputs) and "y" (integer labels)."""
    t = from_bytes(data, what="data")
    if "x" not in t or "y" not in t:
        raise TensorFileError("data must hold tensors 'x' (inputs) and 'y' (labels)")
    x, y = t["x"], t["y"]
    if y.ndim != 1 or x.shape[0] != y.shape[0] or y.dtype.is_floating_point:
        raise TensorFileError(f"data: 'y' must be 1-D integer labels matching x's rows; got x {tuple(x.shape)}, "
                              f"y {tuple(y.shape)} {y.dtype}")
    return x, y.long()
