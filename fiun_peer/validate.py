"""What PublishModel accepts: bounds and checks that run before anything is built, stored or signed.

A bad publication must be refused with the reason (the admin API answers INVALID_ARGUMENT) and leave
nothing behind. The architecture is checked before a real tensor is allocated (an ``in_shape`` of
1x2^20x2^20 once tried to allocate 562 TB): the input size from the shape, the largest layer output
from the zoo's shapes (``fiun_peer.models.largest_output``), the parameter count from the model
built on torch's ``meta`` device, which costs no memory. Then the weights must match that model
exactly and be finite, and the data must fit its input and its head.

Bounds (documented in docs/security.md and the AdminService reference):

- :data:`MAX_INPUT_ELEMENTS` numbers per sample (e.g. 3x256x256 for the MLP);
- :data:`MAX_ACTIVATION_ELEMENTS` numbers in any layer's output for one sample (the backbone runs
  on chunks of 1,024 samples, so this caps one activation at 1 GiB of float32; for the CNN it means
  at most 64x64 pixels, for the ResNet 8,192 pixels);
- :data:`MAX_PARAMETERS` parameters (256 MiB of float32);
- :data:`MAX_CLASSES` classes in the head and :data:`MAX_SAMPLES` samples of own data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .models import MODELS, build_model, largest_output
from .records import RELATIONS

MAX_INPUT_ELEMENTS = 1 << 18
MAX_ACTIVATION_ELEMENTS = 1 << 18
MAX_PARAMETERS = 1 << 26
MAX_CLASSES = 10_000
MAX_SAMPLES = 1_000_000
ARCHITECTURE_KEYS = ("model", "in_shape", "num_classes")
_EXAMPLE = '{"model":"mlp","in_shape":[1,8,8],"num_classes":10}'


class PublishError(ValueError):
    """A publication the peer refuses; the message says why (the admin API: INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Architecture:
    model: str
    in_shape: tuple[int, ...]
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "in_shape": list(self.in_shape), "num_classes": self.num_classes}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_architecture(arch: object) -> Architecture:
    """The architecture spec, checked against the zoo and the size bounds without allocating."""
    if not isinstance(arch, dict):
        raise PublishError(f"architecture_json must be an object like {_EXAMPLE}")
    if set(arch) != set(ARCHITECTURE_KEYS):
        missing = sorted(set(ARCHITECTURE_KEYS) - set(arch))
        extra = sorted(str(k) for k in set(arch) - set(ARCHITECTURE_KEYS))
        raise PublishError(f"architecture needs exactly the keys {list(ARCHITECTURE_KEYS)} "
                           f"(missing {missing}, unexpected {extra}), e.g. {_EXAMPLE}")
    name, shape, classes = arch["model"], arch["in_shape"], arch["num_classes"]
    if name not in MODELS:
        raise PublishError(f"architecture model {str(name)[:80]!r} is not one of {', '.join(MODELS)}")
    rank = (3,) if name != "mlp" else (1, 2, 3, 4)
    if not isinstance(shape, list) or len(shape) not in rank or not all(_is_int(s) and s >= 1 for s in shape):
        want = "[C, H, W]" if name != "mlp" else "1 to 4 dimensions"
        raise PublishError(f"architecture in_shape must be a list of positive integers ({want} for "
                           f"{name}), got {str(shape)[:80]}")
    if not _is_int(classes) or not 1 <= classes <= MAX_CLASSES:
        raise PublishError(f"architecture num_classes must be an integer from 1 to {MAX_CLASSES}, "
                           f"got {str(classes)[:40]}")
    elements = math.prod(shape)
    if elements > MAX_INPUT_ELEMENTS:
        raise PublishError(f"in_shape {shape} has {elements:,} numbers per sample, more than the "
                           f"{MAX_INPUT_ELEMENTS:,} this peer accepts")
    spec = Architecture(name, tuple(shape), classes)
    _dry_run(spec)
    return spec


def _dry_run(spec: Architecture) -> None:
    """Parameter count (the model built on the meta device: no memory) and the largest layer output
    (from the zoo's shapes), before any real tensor exists."""
    try:
        largest = largest_output(spec.model, spec.in_shape, spec.num_classes)
    except ValueError as exc:
        raise PublishError(f"{spec.model} cannot take inputs of shape {list(spec.in_shape)}: {exc}") from None
    if largest > MAX_ACTIVATION_ELEMENTS:
        raise PublishError(f"{spec.model} with in_shape {list(spec.in_shape)} makes a layer output of "
                           f"{largest:,} numbers per sample, more than the {MAX_ACTIVATION_ELEMENTS:,} "
                           "this peer accepts")
    with torch.device("meta"):
        model = build_model(spec.model, spec.in_shape, spec.num_classes, seed=0)
    params = sum(p.numel() for p in model.parameters())
    if params > MAX_PARAMETERS:
        raise PublishError(f"{spec.model} with in_shape {list(spec.in_shape)} and {spec.num_classes} classes has "
                           f"{params:,} parameters, more than the {MAX_PARAMETERS:,} this peer accepts")


def check_weights(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """The weights are exactly the model's tensors (names, shapes, dtypes) and all finite: NaN or
    Inf would make its model Fisher unusable and stall every later request that touches it."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise PublishError(f"weights do not fit the architecture: missing {missing[:8]}, unexpected {extra[:8]}")
    for k in sorted(expected):
        got, want = state[k], expected[k]
        if tuple(got.shape) != tuple(want.shape):
            raise PublishError(f"weights tensor {k} has shape {list(got.shape)}, the architecture needs "
                               f"{list(want.shape)}")
        if got.dtype != want.dtype:
            raise PublishError(f"weights tensor {k} has dtype {got.dtype}, the architecture needs {want.dtype}")
        if got.is_floating_point() and got.numel() and not bool(torch.isfinite(got).all()):
            raise PublishError(f"weights tensor {k} holds NaN or Inf")


def check_data(x: Tensor, y: Tensor, spec: Architecture) -> None:
    """The owner's data fits the model: float32 inputs of ``in_shape``, finite, labels inside the head."""
    if x.shape[0] == 0:
        raise PublishError("data holds no samples; the model Fisher needs the owner's own data")
    if x.shape[0] > MAX_SAMPLES:
        raise PublishError(f"data holds {x.shape[0]:,} samples, more than the {MAX_SAMPLES:,} this peer accepts")
    if x.dtype != torch.float32:
        raise PublishError(f"data 'x' must be float32, got {x.dtype}")
    if tuple(x.shape[1:]) != spec.in_shape:
        raise PublishError(f"data 'x' has samples of shape {list(x.shape[1:])}, the architecture's in_shape is "
                           f"{list(spec.in_shape)}")
    if not bool(torch.isfinite(x).all()):
        raise PublishError("data 'x' holds NaN or Inf")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= spec.num_classes:
        raise PublishError(f"data labels must be in 0..{spec.num_classes - 1} (the head has {spec.num_classes} "
                           f"classes), found {lo if lo < 0 else hi}")


def check_labels(labels: Sequence[int], spec: Architecture) -> None:
    bad = [c for c in labels if not 0 <= c < spec.num_classes]
    if bad:
        raise PublishError(f"labels {sorted(set(bad))[:8]} are outside the head's classes 0..{spec.num_classes - 1}")


def check_parents(model_id: str, parents: Sequence[tuple[str, str]]) -> None:
    ids = [p for p, _ in parents]
    if len(set(ids)) != len(ids) or model_id in ids:
        raise PublishError("parents must be distinct models other than the model itself")
    for pid, relation in parents:
        if relation not in RELATIONS:
            raise PublishError(f"parent {pid[:80]!r} has relation {relation[:40]!r}; expected one of "
                               f"{', '.join(RELATIONS)}")
