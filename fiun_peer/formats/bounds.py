"""Size bounds for models brought in their own format (torch-export, torchvision, hf), checked
before a model is built for real where the format allows. The zoo keeps its own bounds
(``fiun_peer.validate``). Documented in `fiun-peer admin publish --help`, the AdminService reference
and docs/security.md; tests/test_formats.py holds them to these values."""

from __future__ import annotations

import math

import torch

from ..validate import MAX_SAMPLES
from .base import FormatError

#: Bytes of one artifact (weights, a .pt2 program); gRPC messages are capped at 512 MiB, data included.
MAX_ARTIFACT_BYTES = 384 << 20
#: Parameters of one model (vit_b_16 has 86 M); 512 MiB of float32.
MAX_MODEL_PARAMETERS = 1 << 27
#: Numbers in one sample's input (3x512x512 images fit).
MAX_SAMPLE_INPUT = 1 << 20
#: Numbers in the largest layer output for one sample (features run in chunks sized by it).
MAX_SAMPLE_ACTIVATION = 1 << 24
#: Tokens per sample of a text model's data.
MAX_SEQUENCE = 1 << 13


def summary() -> str:
    """One line for --help texts."""
    return (f"artifacts up to {MAX_ARTIFACT_BYTES >> 20} MiB and {MAX_MODEL_PARAMETERS:,} parameters; per sample at most "
            f"{MAX_SAMPLE_INPUT:,} input numbers (or {MAX_SEQUENCE:,} tokens) and {MAX_SAMPLE_ACTIVATION:,} numbers in "
            f"any layer output; at most {MAX_SAMPLES:,} samples")


def check_artifact_size(artifact: bytes) -> None:
    if not artifact:
        raise FormatError("the model artifact is empty")
    if len(artifact) > MAX_ARTIFACT_BYTES:
        raise FormatError(f"the model artifact has {len(artifact):,} bytes, more than the {MAX_ARTIFACT_BYTES:,} "
                          "this peer accepts")


def check_samples(n: int) -> None:
    if n == 0:
        raise FormatError("data holds no samples; the model Fisher needs the owner's own data")
    if n > MAX_SAMPLES:
        raise FormatError(f"data holds {n:,} samples, more than the {MAX_SAMPLES:,} this peer accepts")


def check_image_data(x: torch.Tensor, *, shape: tuple[int, ...] | None = None) -> None:
    """Image inputs: float32 [N, ...] with finite values (and, when known, samples of ``shape``)."""
    check_samples(x.shape[0])
    if x.dtype != torch.float32:
        raise FormatError(f"data 'x' must be float32, got {x.dtype}")
    per = math.prod(x.shape[1:])
    if per > MAX_SAMPLE_INPUT:
        raise FormatError(f"data 'x' has samples of {per:,} numbers, more than the {MAX_SAMPLE_INPUT:,} this peer "
                          "accepts")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise FormatError(f"data 'x' has samples of shape {list(x.shape[1:])}, the model takes {list(shape)}")
    if not bool(torch.isfinite(x).all()):
        raise FormatError("data 'x' holds NaN or Inf")


def check_activation(largest: int, what: str) -> None:
    if largest > MAX_SAMPLE_ACTIVATION:
        raise FormatError(f"{what} makes a layer output of {largest:,} numbers per sample, more than the "
                          f"{MAX_SAMPLE_ACTIVATION:,} this peer accepts")


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise FormatError(f"data labels must be in 0..{num_classes - 1} (the head has {num_classes} classes), "
                          f"found {lo if lo < 0 else hi}")
