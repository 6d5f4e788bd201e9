"""The ``torch-export`` format: a ``torch.export`` program (``torch.export.save``, .pt2) of any ``nn.Module``.

The generic path for custom architectures. The archive is checked by ``fiun_peer.formats.pt2``
before ``torch.export.load`` reads it (no pickle, no Python from the archive). The head is the
``aten.linear`` call that produces the program's single output, and its weight (and bias) must be
parameters named like a Linear module's, ``NAME.weight`` and ``NAME.bias``. The features are the
output of the same graph cut just before that call (a copy of the graph whose output is the
head's input, dead code removed), so the backbone runs once and the head not at all. Export the
model in eval mode (a program that updates buffers, e.g. BatchNorm statistics, is refused), with a
dynamic batch dimension (``dynamic_shapes={"x": {0: torch.export.Dim("batch")}}``); a static batch
size B works too, the inputs then run in chunks of B, the last one padded.
"""

from __future__ import annotations

import copy
import io
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from . import bounds, pt2
from .base import Classifier, FormatError, Inputs, chunk_for

NAME = "torch-export"


def _load_program(artifact: bytes) -> torch.export.ExportedProgram:
    pt2.check_archive(artifact)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(io.BytesIO(artifact))
    except Exception as exc:  # a damaged or foreign archive: torch raises many kinds of errors
        raise FormatError(f"torch.export cannot load the archive: {type(exc).__name__}: {str(exc)[:300]}") from None


def _set_attr(module: nn.Module, fqn: str, value: Tensor) -> None:
    *path, leaf = fqn.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, leaf, value)


class ExportClassifier(Classifier):
    """A loaded ``torch.export`` program, its head found in the graph."""

    def __init__(self, ep: torch.export.ExportedProgram, head_name: str, inputs: list[str], static_batch: int | None,
                 chunk: int) -> None:
        self.format = NAME
        self.ep = ep
        self.head_name = head_name
        self.inputs = inputs
        self.static_batch = static_batch
        self.chunk = static_batch or chunk
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = ep.module()
            self.backbone = _cut_before_head(self.module, f"{head_name}.weight")

    @property
    def weight(self) -> Tensor:
        return self.ep.state_dict[f"{self.head_name}.weight"].detach()

    @property
    def bias(self) -> Tensor | None:
        b = self.ep.state_dict.get(f"{self.head_name}.bias")
        return None if b is None else b.detach()

    def _args(self, batch: Inputs) -> list[Tensor]:
        if isinstance(batch, Tensor):
            if len(self.inputs) != 1:
                raise FormatError(f"this program takes the named inputs {self.inputs}, not one tensor 'x'")
            return [batch]
        if sorted(batch) != sorted(self.inputs):
            raise FormatError(f"this program takes the inputs {self.inputs}, the data holds {sorted(batch)}")
        return [batch[k] for k in self.inputs]

    def _run(self, gm: nn.Module, batch: Inputs) -> Tensor:
        args = self._args(batch)
        n = args[0].shape[0]
        if self.static_batch and n != self.static_batch:   # pad to the program's fixed batch size
            args = [torch.cat([a, a.new_zeros((self.static_batch - n, *a.shape[1:]))]) for a in args]
        out = gm(*args)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out[:n]

    @torch.no_grad()
    def features(self, inputs: Inputs) -> Tensor:
        from ..core.fisher import num_samples, take

        n = num_samples(inputs)
        parts = [self._run(self.backbone, take(inputs, slice(s, s + self.chunk))) for s in range(0, n, self.chunk)]
        if not parts:
            return torch.empty(0)
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).flatten(1)

    def _logits_chunk(self, inputs: Inputs) -> Tensor:
        return self._run(self.module, inputs)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.ep.state_dict.items()}

    @torch.no_grad()
    def set_head(self, head: Mapping[str, Tensor]) -> None:
        for fqn, value in self._check_head_update(head).items():
            old = self.ep.state_dict[fqn]
            param = nn.Parameter(value, requires_grad=old.requires_grad)
            self.ep.state_dict[fqn] = param
            _set_attr(self.module, fqn, param)

    def artifact(self) -> bytes:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.export.save(self.ep, buf)
        return buf.getvalue()


def _cut_before_head(gm: torch.fx.GraphModule, weight_fqn: str) -> torch.fx.GraphModule:
    """A GraphModule sharing ``gm``'s tensors whose output is the head's input (the features)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cut = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    output = next(n for n in cut.graph.nodes if n.op == "output")
    (head_call,) = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
    weight = head_call.args[1]
    if head_call.target is not torch.ops.aten.linear.default or getattr(weight, "target", None) != weight_fqn:
        raise FormatError(f"the program's output is not the Linear call on {weight_fqn}")
    output.args = ((head_call.args[0],),) if isinstance(output.args[0], (tuple, list)) else (head_call.args[0],)
    cut.graph.eliminate_dead_code()
    cut.recompile()
    return cut


def _find_head(ep: torch.export.ExportedProgram, head: str) -> tuple[str, torch.fx.Node]:
    """(head name, the aten.linear node) of the program's single output."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    bad_in = [s.kind.name for s in sig.input_specs if s.kind not in (InputKind.PARAMETER, InputKind.BUFFER,
                                                                      InputKind.CONSTANT_TENSOR, InputKind.USER_INPUT)]
    if bad_in:
        raise FormatError(f"the program takes inputs of kind {sorted(set(bad_in))}; a plain classifier takes "
                          "parameters, buffers and tensors")
    outs = sig.output_specs
    if any(s.kind != OutputKind.USER_OUTPUT for s in outs):
        raise FormatError("the program updates buffers (was the model exported in training mode? export it "
                          "after model.eval())")
    if len(outs) != 1:
        raise FormatError(f"the program returns {len(outs)} outputs; FIUn needs one, the logits")
    output = next(n for n in ep.graph.nodes if n.op == "output")
    node = output.args[0][0]
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
        what = getattr(node, "target", node)
        raise FormatError(f"the program's output is computed by {what}, not a Linear layer: FIUn dampens the "
                          "Linear head that produces the logits (Eq. 6)")
    params = sig.inputs_to_parameters
    weight = node.args[1]
    fqn = params.get(getattr(weight, "name", ""), "")
    if not fqn.endswith(".weight"):
        raise FormatError("the Linear layer that produces the logits does not use a parameter named NAME.weight "
                          "as its weight")
    name = fqn[:-len(".weight")]
    bias = node.args[2] if len(node.args) > 2 else None
    if bias is not None and params.get(getattr(bias, "name", "")) != f"{name}.bias":
        raise FormatError(f"the head's bias is not the parameter {name}.bias")
    if head and head != name:
        raise FormatError(f"head {head!r} does not produce the logits; the program's output is the Linear layer "
                          f"{name!r}")
    if len(weight.users) != 1 or (bias is not None and len(bias.users) != 1):
        raise FormatError(f"the head {name!r} is used more than once in the program")
    feats = node.args[0].meta.get("val")
    if feats is None or feats.ndim != 2:
        raise FormatError(f"the head {name!r} takes inputs of shape {list(getattr(feats, 'shape', []))}; FIUn needs "
                          "[batch, features]")
    return name, node


def _largest_activation(ep: torch.export.ExportedProgram, batch: object) -> int:
    """Numbers in the largest tensor the program computes for one sample: the outputs of its
    operators whose first dimension is the batch (weights and buffers are not per sample)."""
    largest = 0
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        vals = node.meta.get("val")
        for v in vals if isinstance(vals, (tuple, list)) else [vals]:
            if isinstance(v, Tensor) and v.ndim and str(v.shape[0]) == str(batch):
                largest = max(largest, math.prod(d if isinstance(d, int) else 1 for d in v.shape[1:]))
    return largest


def _user_inputs(ep: torch.export.ExportedProgram) -> tuple[list[str], dict[str, Tensor], int | None]:
    names = list(ep.graph_signature.user_inputs)
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names}
    if not names or any(not isinstance(v, Tensor) for v in vals.values()):
        raise FormatError("the program's inputs are not tensors")
    # The batch dimension: symbolic (dynamic) or one fixed size; SymInts are compared by their text.
    batch = {str(v.shape[0]) if v.ndim else "" for v in vals.values()}
    if len(batch) != 1 or "" in batch:
        raise FormatError("the program's inputs must share their first (batch) dimension")
    b = next(iter(vals.values())).shape[0]
    return names, vals, b if isinstance(b, int) else None


def _check_data(inputs: Inputs, names: list[str], vals: dict[str, Tensor], static: int | None) -> None:
    given = {names[0]: inputs} if isinstance(inputs, Tensor) else dict(inputs)
    if isinstance(inputs, Tensor) and len(names) != 1:
        raise FormatError(f"this program takes the named inputs {names}; the data holds one tensor 'x'")
    if sorted(given) != sorted(names):
        raise FormatError(f"this program takes the inputs {names}, the data holds {sorted(given)}")
    for name in names:
        x, want = given[name], vals[name]
        label = "'x'" if isinstance(inputs, Tensor) else repr(name)
        if x.dtype != want.dtype:
            raise FormatError(f"data {label} must be {str(want.dtype).replace('torch.', '')}, got {x.dtype}")
        dims = [d if isinstance(d, int) else None for d in want.shape[1:]]
        if x.ndim != want.ndim or any(d is not None and d != g for d, g in zip(dims, x.shape[1:], strict=True)):
            shown = ["*" if d is None else d for d in dims]
            raise FormatError(f"data {label} has samples of shape {list(x.shape[1:])}, the program takes {shown}")
        bounds.check_samples(x.shape[0])
        if math.prod(x.shape[1:]) > bounds.MAX_SAMPLE_INPUT:
            raise FormatError(f"data {label} has samples of {math.prod(x.shape[1:]):,} numbers, more than the "
                              f"{bounds.MAX_SAMPLE_INPUT:,} this peer accepts")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise FormatError(f"data {label} holds NaN or Inf")


def prepare(artifact: bytes, architecture: Any, inputs: Inputs, y: Tensor, *, head: str,
            labels: list[int]) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
    if architecture not in (None, {}):
        raise FormatError("a torch.export program describes itself; send no architecture JSON with it")
    ep = _load_program(artifact)
    name, _ = _find_head(ep, head)
    names, vals, static = _user_inputs(ep)
    _check_data(inputs, names, vals, static)
    largest = _largest_activation(ep, next(iter(vals.values())).shape[0])
    bounds.check_activation(largest, "the program")
    c = ExportClassifier(ep, name, names, static, chunk_for(largest))
    sample = inputs[:1] if isinstance(inputs, Tensor) else {k: v[:1] for k, v in inputs.items()}
    try:
        c.logits(sample)
    except FormatError:
        raise
    except Exception as exc:  # what a real sample does to the program (e.g. a guard on a dimension)
        raise FormatError(f"the data does not fit the program: {type(exc).__name__}: {str(exc)[:300]}") from None
    public = {"format": NAME, "head": name}
    return c, public, {"format": NAME, "head": name, "inputs": names, "static_batch": static, "chunk": c.chunk}


def load(artifact: bytes, spec: dict[str, Any]) -> Classifier:
    ep = _load_program(artifact)
    name, _ = _find_head(ep, spec["head"])
    return ExportClassifier(ep, name, spec["inputs"], spec["static_batch"], spec["chunk"])
