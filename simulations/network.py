"""Putting a trained topology onto real peers: one model per peer, published over the admin API."""

from __future__ import annotations

import json
from collections.abc import Callable

from fiun_peer.rpc.admin_client import ParentSpec
from fiun_peer.tensors import to_bytes

from . import byom
from .centralized import Stage
from .peers import Peer, poll
from .training import own_data


def architecture(stage: Stage) -> dict:
    """The zoo architecture JSON of the stage's models (other formats: see Stage.publication)."""
    return {"model": stage.train_cfg.model, "in_shape": list(stage.ds.input_shape),
            "num_classes": stage.ds.num_classes}


def model_fields(stage: Stage, node: str, zoo_architecture: str, *, exclude_labels: list[int] = ()) -> dict:
    """PublishModelRequest fields for a node's model: zoo weights and data (without
    ``exclude_labels``), or (another format) the very artifact and data the centralized reference
    prepared (Stage.publication)."""
    if byom.is_byom(stage.train_cfg.model):
        if exclude_labels:
            raise ValueError("exclude_labels is for zoo stages: other formats publish what the reference prepared")
        return stage.publication(node)[1]
    x, y = own_data(stage.ds, stage.data_idx[node], exclude_labels=list(exclude_labels))
    return {"weights": to_bytes(stage.models[node].state_dict()), "data": to_bytes({"x": x, "y": y}),
            "architecture_json": zoo_architecture}


def publish_stage(stage: Stage, owners: dict[str, Peer], *, timeout: float = 60.0,
                  on_published: Callable[[str], None] | None = None,
                  exclude_labels: dict[str, list[int]] | None = None) -> dict[str, str]:
    """Publish each model of the stage that has an owner in ``owners``, parents first. Before a child
    is published, waits until its owner has heard (by gossip) of all its parents. Returns model id ->
    digest; ``on_published(model_id)`` is called after each. ``exclude_labels[m]``: publish m with its
    own data and label set without these labels (a narrow model that inherits them)."""
    arch = json.dumps(architecture(stage))
    digests = {}
    for spec in (s for s in stage.nodes if s.id in owners):
        peer = owners[spec.id]
        if spec.parents:
            poll(lambda p=peer, s=spec: True if set(s.parents) <= p.client.known_models(timeout=10) else None,
                 timeout=timeout, interval=0.1, what=f"{peer.name} has not heard of parents {spec.parents} of {spec.id}")
        dropped = (exclude_labels or {}).get(spec.id, [])
        fields = dict(model_fields(stage, spec.id, arch, exclude_labels=dropped))  # a copy: byom caches it
        reply = peer.client.publish(
            spec.id, fields.pop("weights"), fields.pop("data"), labels=[c for c in spec.labels if c not in dropped],
            parents=[ParentSpec(p, spec.relation or "finetune") for p in spec.parents], timeout=300, **fields)
        digests[spec.id] = reply.model_digest
        if on_published:
            on_published(spec.id)
    return digests
