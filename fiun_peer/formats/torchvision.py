"""The ``torchvision`` format: a torchvision classification architecture by name plus safetensors weights.

Architecture JSON: ``{"name": "resnet18", "num_classes": 10}`` (``"image_size": N`` too for the
vision transformers, whose position embeddings fix the input size). The model is built by
torchvision's own code (``torchvision.models.get_model``), first on the meta device to count its
parameters, then for real; the weights are safetensors (no pickle) and must be exactly its tensors.
Only classification architectures (``torchvision.models.list_models(module=torchvision.models)``)
are accepted.
"""

from __future__ import annotations

from typing import Any

import torch

from ..tensors import from_bytes, to_bytes
from ..validate import MAX_CLASSES
from . import bounds
from .base import (
    Classifier,
    FormatError,
    Inputs,
    ModuleClassifier,
    check_state_matches,
    chunk_for,
    count_parameters,
    last_linear,
    probe_head,
)
from .tv_shim import import_torchvision

NAME = "torchvision"
ARCH_KEYS = {"name", "num_classes", "image_size"}
_EXAMPLE = '{"name": "resnet18", "num_classes": 10}'


def _call(model: torch.nn.Module, batch: Inputs) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor):
        raise FormatError("torchvision models take image data: tensors 'x' and 'y'")
    return model(batch)


def check_architecture(arch: Any) -> dict[str, Any]:
    if not isinstance(arch, dict) or not {"name", "num_classes"} <= set(arch) or set(arch) - ARCH_KEYS:
        raise FormatError(f"torchvision architecture must be an object with name, num_classes (and, for vision "
                          f"transformers, image_size), e.g. {_EXAMPLE}; got {str(arch)[:120]}")
    name, classes = arch["name"], arch["num_classes"]
    tv = import_torchvision()
    known = tv.models.list_models(module=tv.models)
    if not isinstance(name, str) or name not in known:
        raise FormatError(f"torchvision architecture {str(name)[:60]!r} is not a torchvision classification model "
                          f"(torchvision {tv.__version__} has {len(known)}, e.g. resnet18, mobilenet_v3_small, vit_b_16)")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise FormatError(f"num_classes must be an integer from 1 to {MAX_CLASSES}, got {str(classes)[:40]}")
    if "image_size" in arch:
        size = arch["image_size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 4096:
            raise FormatError(f"image_size must be an integer from 1 to 4096, got {str(size)[:40]}")
    return {k: arch[k] for k in sorted(arch)}


def _build(arch: dict[str, Any], *, meta: bool = False) -> torch.nn.Module:
    tv = import_torchvision()
    kwargs = {k: v for k, v in arch.items() if k != "name"}
    try:
        if meta:
            with torch.device("meta"):
                return tv.models.get_model(arch["name"], **kwargs)
        gen_state = torch.random.get_rng_state()   # the random init is overwritten; keep the caller's RNG
        try:
            return tv.models.get_model(arch["name"], **kwargs)
        finally:
            torch.random.set_rng_state(gen_state)
    except (TypeError, ValueError, AssertionError) as exc:
        raise FormatError(f"torchvision cannot build {arch['name']} with {kwargs}: {exc}") from None


def _load(artifact: bytes, arch: dict[str, Any]) -> torch.nn.Module:
    """The model with the artifact's weights. Built on the meta device (no memory, no random
    initialisation: for ResNet-18 that was most of a load) and given the loaded tensors themselves;
    a model with a tensor the weights do not carry (a non-persistent buffer) is built for real."""
    model = _build(arch, meta=True)
    params = count_parameters(model)
    if params > bounds.MAX_MODEL_PARAMETERS:
        raise FormatError(f"{arch['name']} has {params:,} parameters, more than the {bounds.MAX_MODEL_PARAMETERS:,} "
                          "this peer accepts")
    state = from_bytes(artifact, what="weights")
    check_state_matches(state, model.state_dict(), f"torchvision {arch['name']}")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = _build(arch)
        model.load_state_dict(state, strict=True)
    return model.eval()


def prepare(artifact: bytes, architecture: Any, inputs: Inputs, y: torch.Tensor, *, head: str,
            labels: list[int]) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
    arch = check_architecture(architecture)
    model = _load(artifact, arch)
    if not isinstance(inputs, torch.Tensor):
        raise FormatError("torchvision models take image data: tensors 'x' and 'y'")
    bounds.check_image_data(inputs)
    head = head or last_linear(model)
    largest = probe_head(model, head, inputs[:1], _call)
    bounds.check_activation(largest, arch["name"])
    c = ModuleClassifier(model, head, format=NAME, call=_call, to_bytes=to_bytes, chunk=chunk_for(largest))
    public = {"format": NAME, "name": arch["name"], "head": head}
    return c, public, {"format": NAME, "architecture": arch, "head": head, "chunk": c.chunk}


def load(artifact: bytes, spec: dict[str, Any]) -> Classifier:
    model = _load(artifact, spec["architecture"])
    return ModuleClassifier(model, spec["head"], format=NAME, call=_call, to_bytes=to_bytes, chunk=spec["chunk"])
