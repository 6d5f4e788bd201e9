"""Bring your own model: the formats a model may be published in, one small module each.

- ``zoo``: our own mlp/cnn/resnet, safetensors weights + ``{"model", "in_shape", "num_classes"}``;
- ``torch-export``: a ``torch.export`` program (.pt2) of any ``nn.Module``;
- ``torchvision``: a torchvision classification architecture by name + safetensors weights;
- ``hf``: a Hugging Face ``transformers`` image or sequence classifier, config.json + model.safetensors.

Each loads an artifact without running code from it, finds the head (the final Linear layer that
produces the logits, or the one the owner names) and refuses a head that is not a Linear with the
reason, computes head features in chunks, and writes the artifact again with a new head. The agent,
the centralized reference and the unlearning steps (``fiun_peer.unlearn``) only see the common
:class:`~fiun_peer.formats.base.Classifier`, so they stay format-agnostic, and the peers' results
stay bit-equal to the reference (both call :func:`prepare`/:func:`load` and then the same core).

What a peer keeps to load its model again (the *spec*: format, head, the owner's architecture JSON,
the chunk size) stays in its own store; the lineage record carries only what other peers need (the
format name and the head's tensor names; the head's shapes are those of the announced Fishers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.fisher import num_samples
from ..validate import PublishError
from . import hf, torch_export, torchvision, zoo
from .base import Classifier, FormatError, Inputs

FORMATS = ("zoo", "torch-export", "torchvision", "hf")
# Imported statically: each format module imports its framework (torchvision, transformers) only
# when a model of that format is loaded, so the registry costs nothing on a daemon without extras.
_MODULES = {"zoo": zoo, "torch-export": torch_export, "torchvision": torchvision, "hf": hf}

__all__ = ["FORMATS", "Classifier", "FormatError", "Publication", "load", "prepare"]


def _module(name: str):  # noqa: ANN202 -- the format's module
    if name not in _MODULES:
        raise FormatError(f"unknown model format {str(name)[:40]!r}; expected one of {', '.join(FORMATS)}")
    return _MODULES[name]


@dataclass
class Publication:
    """A model checked for publication: what the agent signs, stores and computes F_j on."""

    classifier: Classifier
    inputs: Inputs
    y: torch.Tensor
    head_tensors: list[str]
    architecture: dict[str, Any]   # for the lineage record: public, small
    spec: dict[str, Any]           # for this peer's store: how to load the artifact again


def prepare(format: str, artifact: bytes, architecture: Any, data: bytes, *, head: str = "",
            labels: list[int] | tuple[int, ...] = ()) -> Publication:
    """Check and load a publication: the artifact (bounded, no code run from it), the head, the data
    (shapes, dtypes, labels inside the head). Raises PublishError (INVALID_ARGUMENT) with the reason."""
    from ..tensors import TensorFileError, load_dataset_bytes
    from . import bounds

    fmt = _module(format or "zoo")
    if fmt.NAME != "zoo":
        bounds.check_artifact_size(artifact)
        if head and not all(part.isidentifier() or part.isdigit() for part in head.split(".")):
            raise FormatError(f"head {head[:80]!r} is not a module name like fc or classifier.3")
    if fmt.NAME == "zoo":  # the zoo's architecture check comes first, before any tensor exists
        from ..validate import check_architecture, check_labels

        check_labels(list(labels), check_architecture(architecture))
    try:
        inputs, y = load_dataset_bytes(data)
    except TensorFileError as exc:
        raise PublishError(str(exc)) from None
    try:
        classifier, public, spec = fmt.prepare(artifact, architecture, inputs, y, head=head, labels=list(labels))
    except TensorFileError as exc:   # e.g. weights that are not safetensors (a pickle is not read)
        raise FormatError(str(exc)) from None
    classes = classifier.weight.shape[0]
    if num_samples(inputs) == 0:
        raise FormatError("data holds no samples; the model Fisher needs the owner's own data")
    bounds.check_labels(y, classes)
    bad = [c for c in labels if not 0 <= c < classes]
    if bad:
        raise FormatError(f"labels {sorted(set(bad))[:8]} are outside the head's classes 0..{classes - 1}")
    if fmt.NAME != "zoo":
        public = {**public, "num_classes": classes}
    return Publication(classifier, inputs, y, classifier.head_tensor_names(), public, spec)


def load(spec: dict[str, Any], artifact: bytes) -> Classifier:
    """Load an artifact this peer accepted before (its spec from :func:`prepare`)."""
    return _module(spec["format"]).load(artifact, spec)
