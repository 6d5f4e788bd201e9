"""Bring your own model, in the simulations: models other than the zoo, trained here, published as
their owners would publish them (an artifact in one of fiun_peer.formats), unlearned by the
centralized reference and by real peers through the same ``fiun_peer.formats`` code.

Model names (``fiun-sim --model``):

- ``torchvision:NAME`` -- any torchvision classification architecture (resnet18, mobilenet_v3_small,
  vit_b_16, ...), trained from random initialisation, published as ``torchvision`` + safetensors;
- ``hf-vit-tiny`` -- a transformers ViTForImageClassification, a small config (hidden 32, 2 layers);
- ``hf-bert-tiny`` -- a transformers BertForSequenceClassification, a tiny config (vocabulary 64,
  hidden 32, 2 layers) on the generated ``tokens`` task;
- ``torch-export:bn-cnn`` -- a custom nn.Module with BatchNorm and a ``classifier`` head, published as
  a ``torch.export`` program (``torch-export:mlp|cnn|resnet`` export the zoo's models the same way,
  ``torch-export:NAME`` a torchvision classification model, e.g. ``torch-export:resnet18``).

Training works on trainable ``nn.Module``s that map a batch tensor to logits (the HF models behind a
thin wrapper; text samples are ``[input_ids, attention_mask]`` stacked in one int64 tensor). FIUn
works on what :func:`fiun_peer.formats.prepare` makes of each node's artifact and own data, exactly
as the node's peer does at publication, so the reference and the peers agree to the bit.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fiun_peer.formats import Classifier, Publication
from fiun_peer.models import MODELS, build_model
from fiun_peer.tensors import from_bytes, to_bytes

#: Examples for --help; any torchvision classification name works after "torchvision:".
EXAMPLES = ("torchvision:resnet18", "torchvision:mobilenet_v3_small", "hf-vit-tiny", "hf-bert-tiny",
            "torch-export:bn-cnn")
DEFAULT_DATASET = {"torchvision": "digits32", "hf-vit-tiny": "digits", "hf-bert-tiny": "tokens",
                   "torch-export": "digits"}
#: torch-export models built from torchvision take its colour images.
TORCH_EXPORT_OWN = ("bn-cnn", *MODELS)


def is_byom(name: str) -> bool:
    return name not in MODELS


def check_name(name: str) -> str:
    """The model name as given, or ValueError saying what is accepted."""
    if name in MODELS or name in ("hf-vit-tiny", "hf-bert-tiny"):
        return name
    kind, _, arch = name.partition(":")
    if kind == "torchvision" and arch:
        return name
    if kind == "torch-export" and arch:
        return name
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}, or {', '.join(EXAMPLES)} "
                     "(torchvision:NAME takes any torchvision classification model, torch-export:mlp|cnn|resnet "
                     "exports a zoo model, torch-export:NAME a torchvision one)")


def format_of(name: str) -> str:
    if name in MODELS:
        return "zoo"
    return {"hf-vit-tiny": "hf", "hf-bert-tiny": "hf"}.get(name) or name.partition(":")[0]


def default_dataset(name: str) -> str:
    if name in MODELS:
        return "digits"
    kind, _, arch = name.partition(":")
    if kind == "torch-export" and arch not in TORCH_EXPORT_OWN:
        return "digits32"
    return DEFAULT_DATASET.get(name) or DEFAULT_DATASET[name.partition(":")[0]]


def check_dataset(name: str, dataset: str, input_shape: tuple[int, ...]) -> None:
    text = dataset == "tokens"
    if (name == "hf-bert-tiny") != text:
        raise ValueError(f"--model {name} {'needs' if name == 'hf-bert-tiny' else 'cannot take'} text data "
                         f"(--dataset tokens); got --dataset {dataset}")
    kind, _, arch = name.partition(":")
    tv = kind == "torchvision" or (kind == "torch-export" and arch not in TORCH_EXPORT_OWN)
    if tv and (len(input_shape) != 3 or input_shape[0] != 3):
        raise ValueError(f"torchvision models take 3-channel images (--dataset digits32 or cifar100-shaped); "
                         f"{dataset} has samples of shape {list(input_shape)}")


# -- trainable models ---------------------------------------------------------------------------------


class BNNet(nn.Module):
    """A custom classifier with BatchNorm and a ``classifier`` head: the torch-export example."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        c = in_shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(8 * width, 64), nn.BatchNorm1d(64), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(self.body(x)))


class HFImage(nn.Module):
    """A transformers image classifier that maps pixels to logits (for training here)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(pixel_values=x).logits


class HFText(nn.Module):
    """A transformers sequence classifier on [input_ids, attention_mask] stacked: [N, 2, L] int64."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def _transformers():  # noqa: ANN202
    from fiun_peer.formats.hf import _transformers as load

    return load()


def build(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised trainable model; the same arguments give the same weights."""
    if name in MODELS:
        return build_model(name, input_shape, num_classes, seed=seed)
    check_name(name)
    kind, _, arch = name.partition(":")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if kind == "torch-export" and arch == "bn-cnn":
            return BNNet(input_shape, num_classes)
        if kind == "torch-export" and arch in MODELS:
            return build_model(arch, input_shape, num_classes, seed=seed)
        if kind in ("torchvision", "torch-export"):
            from fiun_peer.formats.tv_shim import import_torchvision

            tv = import_torchvision()
            extra = {"image_size": input_shape[-1]} if arch.startswith("vit_") else {}
            return tv.models.get_model(arch, num_classes=num_classes, **extra)
        t = _transformers()
        if name == "hf-vit-tiny":
            cfg = t.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              image_size=input_shape[-1], patch_size=2 if input_shape[-1] <= 8 else 4,
                              num_channels=input_shape[0], num_labels=num_classes)
            return HFImage(t.ViTForImageClassification(cfg))
        from simulations.data import TOKEN_VOCAB

        cfg = t.BertConfig(vocab_size=TOKEN_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=input_shape[-1] * 2, num_labels=num_classes)
        return HFText(t.BertForSequenceClassification(cfg))
    finally:
        torch.random.set_rng_state(gen_state)


# -- artifacts, as owners publish them -------------------------------------------------------------------


def artifact(name: str, model: nn.Module, example: Tensor) -> tuple[bytes, dict[str, Any] | None]:
    """(artifact bytes, architecture JSON object) for PublishModel in ``format_of(name)``."""
    kind, _, arch = name.partition(":")
    model = model.eval()
    if kind == "torchvision":
        out = {"name": arch, "num_classes": _head_out(model)}
        if arch.startswith("vit_"):
            out["image_size"] = int(example.shape[-1])
        return to_bytes(model.state_dict()), out
    if kind == "torch-export":
        batch = torch.export.Dim("batch")
        ep = torch.export.export(model, (example[:4].contiguous(),), dynamic_shapes=({0: batch},))
        buf = io.BytesIO()
        torch.export.save(ep, buf)
        return buf.getvalue(), None
    if name in ("hf-vit-tiny", "hf-bert-tiny"):
        from fiun_peer.formats.hf import _to_bytes

        inner = model.model
        inner.config.architectures = [type(inner).__name__]
        return _to_bytes(inner.state_dict()), json.loads(inner.config.to_json_string())
    if name in MODELS:
        return to_bytes(model.state_dict()), {"model": name, "in_shape": list(example.shape[1:]),
                                              "num_classes": _head_out(model)}
    raise ValueError(f"unknown model {name!r}")


def _head_out(model: nn.Module) -> int:
    from fiun_peer.core.fisher import find_head

    return find_head(model)[1].out_features


def to_inputs(name: str, x: Tensor) -> Tensor | dict[str, Tensor]:
    """What the model's owner publishes as data inputs for stage samples ``x``."""
    if name == "hf-bert-tiny":
        return {"input_ids": x[:, 0].contiguous(), "attention_mask": x[:, 1].contiguous()}
    return x


def data_bytes(name: str, x: Tensor, y: Tensor) -> bytes:
    """The owner's data file: "x"/"y", or input_ids/attention_mask/labels for a text model."""
    inputs = to_inputs(name, x)
    if isinstance(inputs, Tensor):
        return to_bytes({"x": inputs, "y": y})
    return to_bytes({**inputs, "labels": y})


def publish_fields(name: str, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Any]:
    """PublishModelRequest fields (weights, data, architecture_json, format) for one model."""
    art, arch = artifact(name, model, x)
    return {"weights": art, "data": data_bytes(name, x, y), "format": format_of(name),
            "architecture_json": "" if arch is None else json.dumps(arch)}


def publication(name: str, model: nn.Module, x: Tensor, y: Tensor, labels: list[int] | tuple[int, ...] = ()
                ) -> tuple[Publication, dict[str, Any]]:
    """What the owner's peer makes of this model at PublishModel (fiun_peer.formats.prepare), and the
    PublishModelRequest fields it was made from (the same bytes go to the peer)."""
    from fiun_peer.formats import prepare

    f = publish_fields(name, model, x, y)
    arch = json.loads(f["architecture_json"]) if f["architecture_json"] else None
    return prepare(f["format"], f["weights"], arch, f["data"], labels=list(labels)), f


def state_of(format: str, artifact_bytes: bytes) -> dict[str, Tensor]:
    """Every tensor of an exported artifact by name (to compare a peer's version with the reference)."""
    if format == "torch-export":
        from fiun_peer.formats.torch_export import _load_program

        return {k: v.detach() for k, v in _load_program(artifact_bytes).state_dict.items()}
    return from_bytes(artifact_bytes, what="weights")


class ClassifierModule(nn.Module):
    """A Classifier as a module that maps stage samples to logits (for the metrics)."""

    def __init__(self, classifier: Classifier, name: str) -> None:
        super().__init__()
        self.classifier, self.name = classifier, name

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.logits(to_inputs(self.name, x))


def with_head(spec: Mapping[str, Any], artifact_bytes: bytes, head: Mapping[str, Tensor], name: str) -> nn.Module:
    """The model ``artifact_bytes`` with ``head`` put in, as a module for the metrics."""
    from fiun_peer.formats import load

    c = load(dict(spec), artifact_bytes)
    c.set_head({k: v for k, v in head.items() if k in set(c.head_tensor_names())})
    return ClassifierModule(c, name)
