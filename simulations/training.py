"""Training the models of a topology: local training, FedAvg aggregation, fine-tuning, transfer
(head only) and distillation, each seeded per node so a run is reproducible."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fiun_peer.core.fisher import find_head
from fiun_peer.core.fiun import label_mask
from simulations.data import Dataset

from .byom import build, is_byom
from .topology import NodeSpec


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mlp"
    lr: float = 3e-3
    batch_size: int = 32
    distill_temperature: float = 2.0


def node_seed(seed: int, node_id: str) -> int:
    """A stable per-node seed (Python's hash() is salted per process)."""
    return (seed * 1_000_003 + zlib.crc32(node_id.encode())) % (2**31)


def fedavg(states: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Mean of the parents' state dicts (integer buffers such as BatchNorm counters: the first's)."""
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k] for s in states]).mean(0)
        else:
            out[k] = v.clone()
    return out


def fit(model: nn.Module, x: Tensor, y: Tensor, epochs: int, *, seed: int, cfg: TrainConfig,
        params: Iterable[nn.Parameter] | None = None,
        loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> nn.Module:
    """Mini-batch Adam on (x, y) for ``epochs``; ``loss_fn(logits, y, idx)`` overrides cross-entropy
    (idx are the batch's row indices, for distillation targets)."""
    if epochs == 0 or x.shape[0] == 0:
        return model
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(list(params) if params is not None else model.parameters(), lr=cfg.lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if idx.numel() == 1 and is_byom(cfg.model):
                continue  # BatchNorm cannot train on one sample at 1x1 (ResNet-18's last maps); zoo runs unchanged
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx], idx) if loss_fn else nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def distill_loss(teacher_logits: Tensor, temperature: float, alpha: float = 0.5):
    def loss(logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        t = temperature
        kd = nn.functional.kl_div(torch.log_softmax(logits / t, 1), torch.softmax(teacher_logits[idx] / t, 1),
                                  reduction="batchmean") * t * t
        return alpha * kd + (1 - alpha) * nn.functional.cross_entropy(logits, y)
    return loss


def train_node(spec: NodeSpec, parents: list[nn.Module], x: Tensor, y: Tensor, ds: Dataset, *,
               seed: int, cfg: TrainConfig) -> nn.Module:
    """Build one node's model from its parents by its relation, then train it on its own data."""
    s = node_seed(seed, spec.id)
    # Every root starts from one shared initialisation, as an FL server broadcasts its initial model.
    model = build(cfg.model, ds.input_shape, ds.num_classes, seed=node_seed(seed, "<init>"))
    rel = spec.relation
    if parents and rel != "distill":
        model.load_state_dict(fedavg([p.state_dict() for p in parents]))
    if rel == "transfer":
        # Transfer learning: the pre-trained backbone stays frozen, only the head adapts.
        return fit(model, x, y, spec.epochs, seed=s, cfg=cfg, params=find_head(model)[1].parameters())
    if rel == "distill":
        with torch.no_grad():
            teacher = torch.stack([p.eval()(x) for p in parents]).mean(0)
        return fit(model, x, y, spec.epochs, seed=s, cfg=cfg,
                   loss_fn=distill_loss(teacher, cfg.distill_temperature))
    return fit(model, x, y, spec.epochs, seed=s, cfg=cfg)


def own_data(ds: Dataset, idx: list[int], exclude_labels: Iterable[int] = ()) -> tuple[Tensor, Tensor]:
    x, y = ds.x_train[idx], ds.y_train[idx]
    ex = sorted(set(exclude_labels))
    if ex:
        keep = ~label_mask(y, ex)
        x, y = x[keep], y[keep]
    return x, y


def train_graph(nodes: list[NodeSpec], data_idx: Mapping[str, list[int]], ds: Dataset, *, seed: int,
                cfg: TrainConfig, exclude_labels: Iterable[int] = (), only: set[str] | None = None,
                base: Mapping[str, nn.Module] | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Train every node (or only ``only``, taking the others from ``base``) in topological order.

    With ``exclude_labels`` this is the re-training baseline: the same procedure, seeds and data,
    minus the forgotten samples. Returns the models and each node's own training seconds.
    """
    models: dict[str, nn.Module] = dict(base or {})
    seconds: dict[str, float] = {}
    exclude = list(exclude_labels)
    for spec in nodes:
        if only is not None and spec.id not in only:
            continue
        x, y = own_data(ds, data_idx[spec.id], exclude)
        t0 = time.perf_counter()
        models[spec.id] = train_node(spec, [models[p] for p in spec.parents], x, y, ds, seed=seed, cfg=cfg)
        seconds[spec.id] = time.perf_counter() - t0
        if progress:
            progress(spec.id)
    return models, seconds
