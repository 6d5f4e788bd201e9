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


#: Named inputs a text model's data may hold besides its labels (passed to the model by these names).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load_dataset_bytes(data: bytes) -> tuple[torch.Tensor | dict[str, torch.Tensor], torch.Tensor]:
    """An owner's own data: safetensors with "x" (inputs) and "y" (integer labels), or, for a text
    model, "input_ids" (and optionally "attention_mask", "token_type_ids") with "labels"."""
    t = from_bytes(data, what="data")
    if "x" in t:
        if "y" not in t:
            raise TensorFileError("data must hold tensors 'x' (inputs) and 'y' (labels)")
        x, y = t["x"], t["y"]
        if y.ndim != 1 or x.ndim < 1 or x.shape[0] != y.shape[0] or y.dtype.is_floating_point:
            raise TensorFileError(f"data: 'y' must be 1-D integer labels matching x's rows; got x {tuple(x.shape)}, "
                                  f"y {tuple(y.shape)} {y.dtype}")
        return x, y.long()
    if "input_ids" in t:
        extra = sorted(set(t) - {*TEXT_INPUTS, "labels"})
        if extra or "labels" not in t:
            raise TensorFileError(f"text data holds {', '.join(TEXT_INPUTS)} and 'labels'; "
                                  f"{'missing labels' if 'labels' not in t else f'unexpected {extra[:4]}'}")
        y = t["labels"]
        inputs = {k: t[k] for k in TEXT_INPUTS if k in t}
        ids = inputs["input_ids"]
        if y.ndim != 1 or y.dtype.is_floating_point or ids.ndim != 2 or ids.shape[0] != y.shape[0]:
            raise TensorFileError(f"text data: 'input_ids' must be [N, L] and 'labels' N integers; got input_ids "
                                  f"{tuple(ids.shape)}, labels {tuple(y.shape)} {y.dtype}")
        for k, v in inputs.items():
            if v.dtype != torch.int64 or v.shape != ids.shape:
                raise TensorFileError(f"text data: '{k}' must be int64 of input_ids' shape {list(ids.shape)}, "
                                      f"got {list(v.shape)} {v.dtype}")
        return inputs, y.long()
    raise TensorFileError("data must hold tensors 'x' (inputs) and 'y' (labels), or 'input_ids' and 'labels' "
                          "for a text model")
