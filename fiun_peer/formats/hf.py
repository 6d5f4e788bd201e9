"""The ``hf`` format: a Hugging Face ``transformers`` classifier, ``config.json`` plus ``model.safetensors``.

Two tasks: image classification (``AutoModelForImageClassification``, data ``x``/``y``, passed as
``pixel_values``) and sequence classification (``AutoModelForSequenceClassification``, data
``input_ids`` [+ ``attention_mask``, ``token_type_ids``] and ``labels``). The config arrives as the
architecture JSON; the model class is transformers' own for the config's ``model_type``, built with
``from_config(..., trust_remote_code=False)`` (first on the meta device, to count parameters);
nothing is read from disk or the hub, and a config that asks for remote code (``auto_map``) is
refused. The weights are safetensors and must be exactly the model's tensors. An optional extra:
``pip install 'fiun-peer[hf]'``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..tensors import from_bytes
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
from .tv_shim import prepare_torchvision

NAME = "hf"
TASKS = ("image-classification", "text-classification")
MAX_CONFIG_BYTES = 1 << 20


def _transformers():  # noqa: ANN202 -- the transformers module
    prepare_torchvision()   # transformers imports torchvision when it is installed (see tv_shim)
    try:
        import transformers
    except ImportError:
        raise FormatError("the hf format needs transformers: pip install 'fiun-peer[hf]'") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _task(config: dict[str, Any]) -> str:
    from transformers.models.auto import modeling_auto as auto

    archs = config.get("architectures")
    model_type = config.get("model_type")
    image, text = auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(model_type, str):
        raise FormatError("the hf config needs \"model_type\" and one entry in \"architectures\", e.g. "
                          "ViTForImageClassification (a config.json that save_pretrained wrote has both)")
    if image.get(model_type) == archs[0]:
        return "image-classification"
    if text.get(model_type) == archs[0]:
        return "text-classification"
    raise FormatError(f"hf architecture {str(archs[0])[:80]!r} for model_type {model_type[:40]!r} is not a "
                      "transformers image or sequence classifier (AutoModelForImageClassification, "
                      "AutoModelForSequenceClassification)")


def check_config(config: Any) -> tuple[dict[str, Any], str]:
    if not isinstance(config, dict):
        raise FormatError("the hf architecture is the model's config.json, a JSON object")
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise FormatError(f"the hf config is larger than {MAX_CONFIG_BYTES:,} bytes")
    if "auto_map" in config or config.get("trust_remote_code"):
        raise FormatError("the hf config asks for remote code (auto_map); this peer runs only transformers' own "
                          "model classes (trust_remote_code=False)")
    _transformers()
    return config, _task(config)


def _build(config: dict[str, Any], task: str, *, meta: bool = False) -> torch.nn.Module:
    transformers = _transformers()
    fields = {k: v for k, v in config.items() if k != "model_type"}
    auto = (transformers.AutoModelForImageClassification if task == "image-classification"
            else transformers.AutoModelForSequenceClassification)
    try:
        cfg = transformers.AutoConfig.for_model(config["model_type"], **fields)
        if meta:
            with torch.device("meta"):
                return auto.from_config(cfg, trust_remote_code=False)
        gen_state = torch.random.get_rng_state()   # the random init is overwritten; keep the caller's RNG
        try:
            return auto.from_config(cfg, trust_remote_code=False)
        finally:
            torch.random.set_rng_state(gen_state)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as exc:
        raise FormatError(f"transformers cannot build this config: {str(exc)[:300]}") from None


def _load(artifact: bytes, config: dict[str, Any], task: str) -> torch.nn.Module:
    params = count_parameters(_build(config, task, meta=True))
    if params > bounds.MAX_MODEL_PARAMETERS:
        raise FormatError(f"this config makes {params:,} parameters, more than the {bounds.MAX_MODEL_PARAMETERS:,} "
                          "this peer accepts")
    state = from_bytes(artifact, what="weights")
    model = _build(config, task)
    check_state_matches(state, model.state_dict(), f"this {config['architectures'][0]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _image_call(model: torch.nn.Module, batch: Inputs) -> torch.Tensor:
    if not isinstance(batch, torch.Tensor):
        raise FormatError("an hf image classifier takes image data: tensors 'x' and 'y'")
    return model(pixel_values=batch).logits


def _text_call(model: torch.nn.Module, batch: Inputs) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        raise FormatError("an hf sequence classifier takes text data: 'input_ids' (+ 'attention_mask') and 'labels'")
    return model(**batch).logits


def _check_text(inputs: Inputs, config: dict[str, Any]) -> None:
    if isinstance(inputs, torch.Tensor):
        raise FormatError("an hf sequence classifier takes text data: 'input_ids' (+ 'attention_mask') and 'labels'")
    ids = inputs["input_ids"]
    bounds.check_samples(ids.shape[0])
    length = ids.shape[1]
    limit = min(bounds.MAX_SEQUENCE, int(config.get("max_position_embeddings") or bounds.MAX_SEQUENCE))
    if not 1 <= length <= limit:
        raise FormatError(f"data 'input_ids' has sequences of {length} tokens; this model takes 1 to {limit}")
    for key, top in (("input_ids", config.get("vocab_size")), ("token_type_ids", config.get("type_vocab_size")),
                     ("attention_mask", 2)):
        if key in inputs and isinstance(top, int) and inputs[key].numel():
            lo, hi = (int(v) for v in torch.aminmax(inputs[key]))
            if lo < 0 or hi >= top:
                raise FormatError(f"data '{key}' must lie in 0..{top - 1}, found {lo if lo < 0 else hi}")


def prepare(artifact: bytes, architecture: Any, inputs: Inputs, y: torch.Tensor, *, head: str,
            labels: list[int]) -> tuple[Classifier, dict[str, Any], dict[str, Any]]:
    config, task = check_config(architecture)
    model = _load(artifact, config, task)
    if task == "image-classification":
        if not isinstance(inputs, torch.Tensor):
            raise FormatError("an hf image classifier takes image data: tensors 'x' and 'y'")
        bounds.check_image_data(inputs)
        call = _image_call
    else:
        _check_text(inputs, config)
        call = _text_call
    head = head or last_linear(model)
    sample = inputs[:1] if isinstance(inputs, torch.Tensor) else {k: v[:1] for k, v in inputs.items()}
    largest = probe_head(model, head, sample, call)
    bounds.check_activation(largest, config["architectures"][0])
    c = ModuleClassifier(model, head, format=NAME, call=call, to_bytes=_to_bytes, chunk=chunk_for(largest))
    public = {"format": NAME, "model_type": config["model_type"], "task": task, "head": head}
    return c, public, {"format": NAME, "architecture": config, "task": task, "head": head, "chunk": c.chunk}


def load(artifact: bytes, spec: dict[str, Any]) -> Classifier:
    model = _load(artifact, spec["architecture"], spec["task"])
    call = _image_call if spec["task"] == "image-classification" else _text_call
    return ModuleClassifier(model, spec["head"], format=NAME, call=call, to_bytes=_to_bytes, chunk=spec["chunk"])


def _to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """model.safetensors as save_pretrained writes it (its metadata says the tensors are PyTorch's)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in state.items()}, metadata={"format": "pt"})
