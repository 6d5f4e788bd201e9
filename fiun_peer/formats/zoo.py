"""The ``zoo`` format: our own models (``fiun_peer.models``: mlp, cnn, resnet) as safetensors weights
plus ``{"model", "in_shape", "num_classes"}``. Exactly what PublishModel accepted before formats
existed, with the same checks and messages (``fiun_peer.validate``)."""

from __future__ import annotations

from typing import Any

import torch

from ..models import build_model
from ..tensors import from_bytes, to_bytes
from ..validate import Architecture, PublishError, check_architecture, check_data, check_labels, check_weights
from .base import Classifier, FormatError, Inputs, ModuleClassifier

NAME = "zoo"


def prepare(artifact: bytes, architecture: Any, inputs: Inputs, y: torch.Tensor, *, head: str,
            labels: list[int]) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
    """(classifier, the lineage record's architecture, the owner's spec) or PublishError."""
    spec = check_architecture(architecture)   # before any real tensor is allocated
    check_labels(labels, spec)
    model = _load(spec, artifact)
    if not isinstance(inputs, torch.Tensor):
        raise FormatError("zoo models take image data: tensors 'x' and 'y'")
    check_data(inputs, y, spec)
    c = ModuleClassifier(model, _head_name(model, head), format=NAME, to_bytes=to_bytes)
    return c, spec.to_dict(), {"format": NAME, "architecture": spec.to_dict()}


def _head_name(model: torch.nn.Module, head: str) -> str:
    from ..core.fisher import find_head

    name = find_head(model)[0]
    if head and head != name:
        raise FormatError(f"head {head!r} is not the zoo model's head {name!r}")
    return name


def _load(spec: Architecture, artifact: bytes) -> torch.nn.Module:
    model = build_model(spec.model, spec.in_shape, spec.num_classes, seed=0)
    state = from_bytes(artifact, what="weights")
    check_weights(state, model.state_dict())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PublishError(f"weights do not fit architecture {spec.model!r}: {exc}") from None
    return model.eval()


def load(artifact: bytes, spec: dict[str, Any]) -> Classifier:
    arch = spec["architecture"]
    model = _load(Architecture(arch["model"], tuple(arch["in_shape"]), int(arch["num_classes"])), artifact)
    return ModuleClassifier(model, _head_name(model, ""), format=NAME, to_bytes=to_bytes)
