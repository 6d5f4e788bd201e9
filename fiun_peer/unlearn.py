"""One node's FIUn steps on a real model, shared by the centralized reference and every peer.

Both call exactly these functions on the same inputs, which is why their results agree to the bit.
The arithmetic itself lives in ``fiun_peer.core``; this module only runs the backbone and moves
tensors between a model's head and the core's {"weight", "bias"} Fisher layout. A model is a zoo
``nn.Module`` whose last layer is an ``nn.Linear``, or any :class:`~fiun_peer.formats.Classifier`
(a torch.export program, a torchvision or transformers model: ``fiun_peer.formats``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .core.fisher import Fisher, find_head, take
from .core.fiun import FIUnSettings, check_fisher, fiun_update, label_mask, model_fisher, unlearning_fisher
from .formats.base import Classifier, Inputs, ModuleClassifier

Model = nn.Module | Classifier


def as_classifier(model: Model) -> Classifier:
    """A zoo model (any nn.Module whose last Linear is the head) seen as a Classifier."""
    if isinstance(model, Classifier):
        return model
    return ModuleClassifier(model, find_head(model)[0], format="zoo")


def head_params(model: Model) -> dict[str, Tensor]:
    """The last layer's tensors keyed like the Fishers ("weight", "bias")."""
    return as_classifier(model).head_params()


def head_tensor_names(model: Model) -> list[str]:
    """State-dict names of the head tensors, e.g. ["head.weight", "head.bias"]."""
    return as_classifier(model).head_tensor_names()


def node_model_fisher(model: Model, x: Inputs, y: Tensor, settings: FIUnSettings) -> Fisher:
    """Eq. 4 on the node's own training data; computed when the model is published."""
    c = as_classifier(model)
    return model_fisher(c.features(x), c.weight, c.bias, y, settings)


def node_unlearning_fisher(model: Model, x: Inputs, y: Tensor, forget_labels: Sequence[int],
                           settings: FIUnSettings) -> Fisher:
    """Eq. 3 on a discovery node's forget data (its own samples whose label is in C_f)."""
    c = as_classifier(model)
    mask = label_mask(y, forget_labels)
    return unlearning_fisher(c.features(take(x, mask)), c.weight, c.bias, torch.as_tensor(y)[mask], forget_labels,
                             settings)


def fisher_problem(fisher: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str:
    """Why a pulled unlearning Fisher cannot be merged into this peer's head, or "" when it can:
    same tensor names, shapes and dtypes as the receiver's own model Fisher, finite, non-negative."""
    if set(fisher) != set(expected):
        return f"tensors {sorted(fisher)} do not match this model's head {sorted(expected)}"
    for k in sorted(expected):
        got, want = fisher[k], expected[k]
        if tuple(got.shape) != tuple(want.shape):
            return f"{k} has shape {list(got.shape)}, this model's head needs {list(want.shape)}"
        if got.dtype != want.dtype:
            return f"{k} has dtype {got.dtype}, this model's head needs {want.dtype}"
    try:  # in sorted order: safetensors hands tensors back in no fixed order, and the reason must not vary
        check_fisher({k: fisher[k] for k in sorted(fisher)}, name="Fisher")
    except ValueError as exc:
        return str(exc)
    return ""


def apply_fiun_head(model: Model, own_model_fisher: Mapping[str, Tensor],
                    discovery_fishers: Sequence[Mapping[str, Tensor]], settings: FIUnSettings, *,
                    forget_labels: Sequence[int] | None = None,
                    ancestor_model_fishers: Sequence[Mapping[str, Tensor]] = ()) -> dict[str, Tensor]:
    """Eqs. 5-6 for one node: the new head tensors, keyed by their state-dict names (a head-only
    version stores just these); the model is not modified."""
    c = as_classifier(model)
    new_head = fiun_update(c.head_params(), own_model_fisher, discovery_fishers, settings,
                           forget_labels=forget_labels, ancestor_model_fishers=ancestor_model_fishers)
    return {f"{c.head_name}.{k}": v for k, v in new_head.items()}


def apply_fiun(model: Model, own_model_fisher: Mapping[str, Tensor],
               discovery_fishers: Sequence[Mapping[str, Tensor]], settings: FIUnSettings, *,
               forget_labels: Sequence[int] | None = None,
               ancestor_model_fishers: Sequence[Mapping[str, Tensor]] = ()) -> dict[str, Tensor]:
    """Eqs. 5-6 for one node: returns the node's new full state dict (the model is not modified)."""
    state = {k: v.detach().clone() for k, v in as_classifier(model).state_dict().items()}
    state.update(apply_fiun_head(model, own_model_fisher, discovery_fishers, settings, forget_labels=forget_labels,
                                 ancestor_model_fishers=ancestor_model_fishers))
    return state
