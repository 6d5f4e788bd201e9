"""What FIUn needs from any classifier, whatever format it came in: the inputs of its last Linear
layer (the features) and that layer's weight and bias (paper Eqs. 3-6 use nothing else).

A :class:`Classifier` is a loaded model seen that way. The formats (``fiun_peer.formats.zoo``,
``torch_export``, ``torchvision``, ``hf``) each build one from an owner's artifact without running
code from the artifact; ``fiun_peer.unlearn`` computes Fishers and the new head on it, the same
calls in the centralized reference and on every peer, so the two agree to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..core.fisher import head_features, num_samples, take
from ..validate import PublishError

#: One batch of model inputs: an image tensor, or named tensors (a text model's input_ids, attention_mask).
Inputs = Tensor | Mapping[str, Tensor]

#: Numbers of one chunk's largest activation (float32: 256 MiB): features are computed in chunks of
#: ``FEATURE_BUDGET // (largest activation of one sample)`` samples, at most 1,024.
FEATURE_BUDGET = 1 << 26
MAX_CHUNK = 1024


class FormatError(PublishError):
    """An artifact, head or data set a format refuses; the message says why (INVALID_ARGUMENT)."""


def chunk_for(per_sample: int) -> int:
    """Samples per chunk so that the largest activation of a chunk stays within FEATURE_BUDGET."""
    return max(1, min(MAX_CHUNK, FEATURE_BUDGET // max(1, per_sample)))


class Classifier:
    """A loaded model as FIUn sees it: features of a batch, the Linear head, and the artifact.

    ``head_name`` is the head's name in the artifact (its tensors are ``{head_name}.weight`` and
    ``{head_name}.bias``). Subclasses implement :meth:`_features_chunk`, :meth:`_logits_chunk`,
    :meth:`state_dict`, :meth:`set_head` and :meth:`artifact`.
    """

    format: str = ""
    head_name: str = ""
    chunk: int = MAX_CHUNK

    @property
    def weight(self) -> Tensor:
        raise NotImplementedError

    @property
    def bias(self) -> Tensor | None:
        raise NotImplementedError

    def head_tensor_names(self) -> list[str]:
        """State-dict names of the head tensors, e.g. ["fc.weight", "fc.bias"]."""
        return [f"{self.head_name}.weight"] + ([f"{self.head_name}.bias"] if self.bias is not None else [])

    def head_params(self) -> dict[str, Tensor]:
        """The head keyed like the Fishers ("weight", "bias"), as copies."""
        out = {"weight": self.weight.detach().clone()}
        if self.bias is not None:
            out["bias"] = self.bias.detach().clone()
        return out

    def head_state(self) -> dict[str, Tensor]:
        """The head keyed by its state-dict names (what a head-only version stores)."""
        return {f"{self.head_name}.{k}": v for k, v in self.head_params().items()}

    @torch.no_grad()
    def features(self, inputs: Inputs) -> Tensor:
        """The head's input features [N, D] for a batch, computed chunk by chunk (frozen backbone)."""
        raise NotImplementedError

    @torch.no_grad()
    def logits(self, inputs: Inputs) -> Tensor:
        n = num_samples(inputs)
        if n == 0:
            return torch.empty(0, self.weight.shape[0])
        return torch.cat([self._logits_chunk(take(inputs, slice(s, s + self.chunk)))
                          for s in range(0, n, self.chunk)])

    def _logits_chunk(self, inputs: Inputs) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        """Every tensor of the artifact by name (the head included), for comparisons."""
        raise NotImplementedError

    def set_head(self, head: Mapping[str, Tensor]) -> None:
        """Replace the head tensors (keyed by state-dict names, e.g. "fc.weight") in place."""
        raise NotImplementedError

    def artifact(self) -> bytes:
        """The owner's artifact with the current head: what ExportModel returns for this version."""
        raise NotImplementedError

    def _check_head_update(self, head: Mapping[str, Tensor]) -> dict[str, Tensor]:
        names = self.head_tensor_names()
        if sorted(head) != sorted(names):
            raise ValueError(f"head tensors {sorted(head)} are not this model's head {names}")
        current = self.head_state()
        for k in names:
            if head[k].shape != current[k].shape or head[k].dtype != current[k].dtype:
                raise ValueError(f"{k}: new head tensor {list(head[k].shape)} {head[k].dtype} does not fit "
                                 f"{list(current[k].shape)} {current[k].dtype}")
        return {k: head[k].detach().clone() for k in names}


def call_module(model: nn.Module, batch: Inputs) -> Any:
    """The usual way to run a model: ``model(x)``, or ``model(**inputs)`` for named inputs."""
    return model(batch) if isinstance(batch, Tensor) else model(**batch)


class ModuleClassifier(Classifier):
    """Any ``nn.Module`` whose head is an ``nn.Linear`` submodule (zoo, torchvision, transformers).

    ``call(module, batch)`` runs the model on one batch and returns the logits tensor; features
    come from a pre-hook on the head that stops the forward pass there (``core.fisher.head_features``).
    ``to_bytes(state_dict)`` serializes the artifact.
    """

    def __init__(self, module: nn.Module, head_name: str, *, format: str,
                 call: Callable[[nn.Module, Inputs], Tensor] = call_module,
                 to_bytes: Callable[[dict[str, Tensor]], bytes] | None = None, chunk: int = MAX_CHUNK) -> None:
        head = module.get_submodule(head_name)
        if not isinstance(head, nn.Linear):
            raise FormatError(f"head {head_name!r} is not a Linear layer (it is {type(head).__name__})")
        self.module = module   # the formats put it in eval mode; head_features handles a training one
        self.head = head
        self.head_name = head_name
        self.format = format
        self._call = call
        self._to_bytes = to_bytes
        self.chunk = chunk

    @property
    def weight(self) -> Tensor:
        return self.head.weight.detach()

    @property
    def bias(self) -> Tensor | None:
        return None if self.head.bias is None else self.head.bias.detach()

    @torch.no_grad()
    def features(self, inputs: Inputs) -> Tensor:
        return head_features(self.module, inputs, self.head, chunk=self.chunk, call=self._call)

    def _logits_chunk(self, inputs: Inputs) -> Tensor:
        return self._call(self.module, inputs)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    @torch.no_grad()
    def set_head(self, head: Mapping[str, Tensor]) -> None:
        for name, value in self._check_head_update(head).items():
            getattr(self.head, name.rsplit(".", 1)[1]).copy_(value)

    def artifact(self) -> bytes:
        if self._to_bytes is None:
            from ..tensors import to_bytes

            return to_bytes(self.state_dict())
        return self._to_bytes(self.state_dict())


# -- head discovery and the one-sample probe ------------------------------------------------------------


def last_linear(module: nn.Module) -> str:
    """The name of the last ``nn.Linear`` registered in ``module`` (the usual place of the head)."""
    found = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise FormatError(f"{type(module).__name__} has no Linear layer; FIUn needs a Linear head")
    return found[-1]


@torch.no_grad()
def probe_head(module: nn.Module, head_name: str, sample: Inputs,
               call: Callable[[nn.Module, Inputs], Tensor]) -> int:
    """Check on one sample that ``head_name`` is a Linear layer, runs once and produces the logits
    (its output *is* the model's output: a head followed by anything else, e.g. a softmax or a
    second layer, is not what Eq. 6 may dampen). Returns the largest layer output of that sample
    (numbers), for the chunk size and the activation bound."""
    try:
        head = module.get_submodule(head_name)
    except AttributeError:
        raise FormatError(f"the model has no submodule named {head_name!r}") from None
    if not isinstance(head, nn.Linear):
        raise FormatError(f"head {head_name!r} is not a Linear layer (it is {type(head).__name__}): FIUn dampens a "
                          "Linear head (Eq. 6); name the final Linear layer with --head")
    outputs: list[Tensor] = []
    largest = [0]

    def on_head(_m: nn.Module, _i: tuple, out: Tensor) -> None:
        outputs.append(out)

    def on_any(_m: nn.Module, _i: tuple, out: object) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out.numel())

    hooks = [head.register_forward_hook(on_head)]
    hooks += [m.register_forward_hook(on_any) for m in module.modules() if m is not head]
    module.eval()
    try:
        logits = call(module, sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise FormatError(f"the data does not fit the model: one sample fails in its forward pass: "
                          f"{str(exc)[:300]}") from None
    finally:
        for h in hooks:
            h.remove()
    if len(outputs) != 1:
        raise FormatError(f"head {head_name!r} runs {len(outputs)} times in one forward pass; FIUn needs the "
                          "Linear layer that produces the logits, once")
    if not isinstance(logits, Tensor) or logits is not outputs[0] and not (
            logits.shape == outputs[0].shape and torch.equal(logits, outputs[0])):
        raise FormatError(f"head {head_name!r} does not produce the model's logits (its output is changed "
                          "afterwards); name the final Linear layer with --head")
    return max(largest[0], outputs[0].numel())


def check_finite_state(state: Mapping[str, Tensor]) -> None:
    for k in sorted(state):
        v = state[k]
        if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all()):
            raise FormatError(f"weights tensor {k} holds NaN or Inf")


def check_state_matches(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    """``state`` has exactly the tensors of ``expected`` (names, shapes, dtypes), all finite."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise FormatError(f"weights do not fit {what}: missing {missing[:8]}, unexpected {extra[:8]}")
    for k in sorted(expected):
        got, want = state[k], expected[k]
        if tuple(got.shape) != tuple(want.shape):
            raise FormatError(f"weights tensor {k} has shape {list(got.shape)}, {what} needs {list(want.shape)}")
        if got.dtype != want.dtype:
            raise FormatError(f"weights tensor {k} has dtype {got.dtype}, {what} needs {want.dtype}")
    check_finite_state(state)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_shape(t: Tensor) -> str:
    return f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}"


def per_sample(numbers: int, batch: int) -> int:
    return math.ceil(numbers / max(1, batch))
