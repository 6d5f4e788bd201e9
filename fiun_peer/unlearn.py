"""One node's FIUn steps on a real model, shared by the centralized reference and every peer.

Both call exactly these functions on the same inputs, which is why their results agree to the bit.
The arithmetic itself lives in ``fiun_peer.core``; this module only runs the backbone and moves
tensors between a model's state dict and the core's {"weight", "bias"} Fisher layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .core.fisher import Fisher, find_head, head_features
from .core.fiun import FIUnSettings, fiun_update, label_mask, model_fisher, unlearning_fisher


def head_params(model: nn.Module) -> dict[str, Tensor]:
    """The last layer's tensors keyed like the Fishers ("weight", "bias")."""
    _, head = find_head(model)
    out = {"weight": head.weight.detach().clone()}
    if head.bias is not None:
        out["bias"] = head.bias.detach().clone()
    return out


def head_tensor_names(model: nn.Module) -> list[str]:
    """State-dict names of the head tensors, e.g. ["head.weight", "head.bias"]."""
    name, head = find_head(model)
    return [f"{name}.{k}" for k in (["weight", "bias"] if head.bias is not None else ["weight"])]


def node_model_fisher(model: nn.Module, x: Tensor, y: Tensor, settings: FIUnSettings) -> Fisher:
    """Eq. 4 on the node's own training data; computed when the model is published."""
    _, head = find_head(model)
    feats = head_features(model, x, head)
    return model_fisher(feats, head.weight.detach(), None if head.bias is None else head.bias.detach(),
                        y, settings)


def node_unlearning_fisher(model: nn.Module, x: Tensor, y: Tensor, forget_labels: Sequence[int],
                           settings: FIUnSettings) -> Fisher:
    """Eq. 3 on a discovery node's forget data (its own samples whose label is in C_f)."""
    _, head = find_head(model)
    mask = label_mask(y, forget_labels)
    feats = head_features(model, x[mask], head)
    return unlearning_fisher(feats, head.weight.detach(), None if head.bias is None else head.bias.detach(),
                             torch.as_tensor(y)[mask], forget_labels, settings)


def apply_fiun(model: nn.Module, own_model_fisher: Mapping[str, Tensor],
               discovery_fishers: Sequence[Mapping[str, Tensor]], settings: FIUnSettings, *,
               forget_labels: Sequence[int] | None = None,
               ancestor_model_fishers: Sequence[Mapping[str, Tensor]] = ()) -> dict[str, Tensor]:
    """Eqs. 5-6 for one node: returns the node's new full state dict (the model is not modified)."""
    name, _ = find_head(model)
    new_head = fiun_update(head_params(model), own_model_fisher, discovery_fishers, settings,
                           forget_labels=forget_labels, ancestor_model_fishers=ancestor_model_fishers)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in new_head.items():
        state[f"{name}.{k}"] = v
    return state
