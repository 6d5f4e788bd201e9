"""The paper's *centralized* setting: one process trains every model of a topology, runs
Algorithm 1 for an unlearning request, and runs the baselines on the same graph.

Algorithm 1 here calls the same node-level functions (``fiun_peer.unlearn``) that every peer calls,
so the decentralized network must reproduce these weights to the bit.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fiun_peer.core.fiun import FIUnSettings, label_mask
from fiun_peer.core.umig import UMIG
from fiun_peer.data import Dataset, load_dataset
from fiun_peer.formats import Classifier, Publication
from fiun_peer.formats.base import Inputs
from fiun_peer.unlearn import apply_fiun_head, as_classifier, node_model_fisher, node_unlearning_fisher

from . import baselines as bl
from . import byom
from .metrics import accuracy, mia_score, split_by_labels
from .topology import NodeSpec, assign_data, builtin, from_json, random_lineage, to_umig
from .training import TrainConfig, node_seed, own_data, train_graph


@dataclass(frozen=True)
class SimConfig:
    framework: str | None = "fl"
    topology_file: str | None = None
    random_lineage: int | None = None
    lineage_nodes: int | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "mlp"
    forget: tuple[int, ...] = (2,)
    seed: int = 0
    settings: FIUnSettings = field(default_factory=FIUnSettings)
    baselines: bool = True
    threads: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        d["forget"] = list(self.forget)
        return d


@dataclass
class Stage:
    """Everything both settings need: data, topology, trained models, and each node's own data."""

    ds: Dataset
    nodes: list[NodeSpec]
    umig: UMIG
    data_idx: dict[str, list[int]]
    models: dict[str, nn.Module]
    train_seconds: dict[str, float]
    train_cfg: TrainConfig
    # Models other than the zoo: node -> (what its owner's peer makes of it at publication, its artifact).
    published: dict[str, tuple[Publication, dict]] = field(default_factory=dict)

    def publication(self, node: str) -> tuple[Publication, dict]:
        """The node's model as its peer sees it after PublishModel (fiun_peer.formats.prepare), and the
        PublishModelRequest fields (artifact, data, format, architecture) that the peer gets."""
        if node not in self.published:
            spec = next(s for s in self.nodes if s.id == node)
            x, y = own_data(self.ds, self.data_idx[node])
            self.published[node] = byom.publication(self.train_cfg.model, self.models[node], x, y, spec.labels)
        return self.published[node]


def prepare(cfg: SimConfig, progress: Callable[[str], None] | None = None) -> Stage:
    """Load data, build the topology, assign own data and train every model."""
    torch.set_num_threads(cfg.threads)  # fixed thread count: reductions, hence bits, are reproducible
    ds = load_dataset(cfg.dataset, seed=cfg.seed, data_dir=cfg.data_dir)
    if byom.is_byom(cfg.model):
        byom.check_dataset(cfg.model, cfg.dataset, ds.input_shape)
    bad = [c for c in cfg.forget if not 0 <= c < ds.num_classes]
    if bad:
        raise ValueError(f"forget labels {bad} are not classes of {cfg.dataset} (0..{ds.num_classes - 1})")
    nodes = topology_of(cfg, ds.num_classes)
    data_idx = assign_data(nodes, ds.y_train, cfg.seed)
    train_cfg = TrainConfig(model=cfg.model)
    models, secs = train_graph(nodes, data_idx, ds, seed=cfg.seed, cfg=train_cfg, progress=progress)
    return Stage(ds, nodes, to_umig(nodes), data_idx, models, secs, train_cfg)


def topology_of(cfg: SimConfig, num_classes: int) -> list[NodeSpec]:
    """The nodes a config names: a JSON file, a seeded random lineage or a built-in framework."""
    if cfg.topology_file:
        return from_json(cfg.topology_file, num_classes)
    if cfg.random_lineage is not None:
        return random_lineage(cfg.random_lineage, nodes=cfg.lineage_nodes, num_classes=num_classes)
    return builtin(cfg.framework, num_classes)


def lineage_data(stage: Stage, node: str) -> list[int]:
    """The training samples a model has seen, directly or by inheritance: its own and its ancestors'."""
    ids = [node, *stage.umig.ancestors(node)]
    return sorted(i for a in ids for i in stage.data_idx[a])


def run_fiun(stage: Stage, forget: tuple[int, ...], settings: FIUnSettings) -> dict:
    """Algorithm 1 over the whole graph. Model Fishers (Eq. 4) are computed first, as at publish
    time, and excluded from the unlearning time, as in the paper (section 4.4.2)."""
    g = stage.umig
    sub = g.unlearning_subgraph(forget)
    if not sub:
        raise ValueError(f"no model's own data holds labels {list(forget)}: nothing to unlearn")
    model_fishers = {n: node_model_fisher(*fiun_inputs(stage, n), settings) for n in sub}
    fhat, fhat_s = {}, {}
    for d in g.discovery_nodes(forget):                       # Algorithm 1, lines 4-6
        model, x, y = fiun_inputs(stage, d)
        t0 = time.perf_counter()
        fhat[d] = node_unlearning_fisher(model, x, y, forget, settings)
        fhat_s[d] = time.perf_counter() - t0
    states, upd_s = {}, {}
    for n in sub:                                             # lines 7-11
        model = fiun_inputs(stage, n)[0]
        t0 = time.perf_counter()
        head = apply_fiun_head(model, model_fishers[n], [fhat[d] for d in g.discovery_ancestors(n, forget)],
                               settings, forget_labels=forget)
        upd_s[n] = time.perf_counter() - t0   # the new head is the update; the full state is for evaluation
        states[n] = {**{k: v.clone() for k, v in as_classifier(model).state_dict().items()}, **head}
    models = {n: model_from_state(stage, n, st) for n, st in states.items()}
    cumulative = {n: max(fhat_s[d] for d in g.discovery_ancestors(n, forget)) + upd_s[n] for n in sub}
    return {"subgraph": sub, "models": models, "states": states, "model_fishers": model_fishers,
            "unlearning_fishers": fhat, "seconds": sum(fhat_s.values()) + sum(upd_s.values()),
            "cumulative": cumulative}


def fiun_inputs(stage: Stage, node: str) -> tuple[nn.Module | Classifier, Inputs, torch.Tensor]:
    """(model, own inputs, own labels) as FIUn sees them: the trained zoo model and its data, or, for
    another format, what the node's peer makes of its artifact and data file at publication."""
    if not byom.is_byom(stage.train_cfg.model):
        return (stage.models[node], *own_data(stage.ds, stage.data_idx[node]))
    pub, _ = stage.publication(node)
    return pub.classifier, pub.inputs, pub.y


def model_from_state(stage: Stage, node: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """An evaluable model (stage samples -> logits) of ``node`` with the weights (or head) ``state``."""
    if not byom.is_byom(stage.train_cfg.model):
        m = _fresh_model(stage)
        m.load_state_dict(state)
        return m.eval()
    pub, fields = stage.publication(node)
    return byom.with_head(pub.spec, fields["weights"], state, stage.train_cfg.model)


def _fresh_model(stage: Stage) -> nn.Module:
    from fiun_peer.models import build_model

    return build_model(stage.train_cfg.model, stage.ds.input_shape, stage.ds.num_classes, seed=0)


def evaluate(stage: Stage, model: nn.Module, node: str, forget: tuple[int, ...]) -> dict:
    ds = stage.ds
    idx = lineage_data(stage, node)
    (fx, fy), (rx, ry) = split_by_labels(ds.x_train[idx], ds.y_train[idx], forget)
    known = {c for a in [node, *stage.umig.ancestors(node)] for c in stage.umig.labels(a)}
    tm = label_mask(ds.y_test, known)
    (tfx, tfy), (trx, try_) = split_by_labels(ds.x_test[tm], ds.y_test[tm], forget)
    return {"ad_r": accuracy(model, rx, ry), "ad_f": accuracy(model, fx, fy),
            "test_ad_r": accuracy(model, trx, try_), "test_ad_f": accuracy(model, tfx, tfy),
            "mia": mia_score(model, rx, trx, fx)}


def run_baselines(stage: Stage, sub: list[str], forget: tuple[int, ...], seed: int) -> dict:
    ds, g, bcfg, cfg = stage.ds, stage.umig, bl.BaselineConfig(), stage.train_cfg
    out = {}
    for name in bl.BASELINES:
        per_node, total = {}, 0.0
        for n in sub:
            x, y = own_data(ds, stage.data_idx[n])
            (fx, fy), (rx, ry) = split_by_labels(x, y, forget)
            if fx.shape[0] == 0:  # an inherited node holds no forget data: use its discovery ancestors'
                parts = [split_by_labels(*own_data(ds, stage.data_idx[d]), forget)[0]
                         for d in g.discovery_ancestors(n, forget)]
                fx, fy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            s = node_seed(seed + 7, n)
            t0 = time.perf_counter()
            if name == "finetune":
                m = bl.finetune(stage.models[n], rx, ry, seed=s, cfg=cfg, bcfg=bcfg)
            elif name == "gradient_ascent":
                m = bl.gradient_ascent(stage.models[n], fx, fy, seed=s, cfg=cfg, bcfg=bcfg)
            else:
                m = bl.distill(stage.models[n], rx, ry, ds, seed=s, cfg=cfg, bcfg=bcfg, node_id=n)
            dt = time.perf_counter() - t0
            total += dt
            ev = evaluate(stage, m, n, forget)
            per_node[n] = {**ev, "seconds": dt}
        deltas = [(v["ad_r"] - (v["ad_f"] or 0.0)) / 100.0 for v in per_node.values() if v["ad_r"] is not None]
        out[name] = {"delta_acc": sum(deltas) / len(deltas) if deltas else None, "seconds": total,
                     "nodes": per_node}
    return out


def run_centralized(cfg: SimConfig, *, show_progress: bool = True) -> dict:
    """The whole experiment; returns the JSON-ready result (see README for the schema)."""
    bar = _progress_bar(show_progress)
    stage = prepare(cfg, progress=bar.step)
    return run_on_stage(stage, cfg, bar)


def run_on_stage(stage: Stage, cfg: SimConfig, bar: _progress_bar | None = None) -> dict:
    """Algorithm 1, re-training and the baselines for one request on an already trained stage."""
    bar = bar or _progress_bar(False)
    forget = tuple(sorted(set(cfg.forget)))
    fiun = run_fiun(stage, forget, cfg.settings)
    sub = fiun["subgraph"]
    bar.phase("re-training (gold standard)")
    retrained, rt_s = train_graph(stage.nodes, stage.data_idx, stage.ds, seed=cfg.seed, cfg=stage.train_cfg,
                                  exclude_labels=forget, only=set(sub), base=stage.models, progress=bar.step)
    rt_cum: dict[str, float] = {}
    for n in sub:
        rt_cum[n] = rt_s[n] + max((rt_cum[p] for p in stage.umig.parents(n) if p in rt_cum), default=0.0)
    discovery = set(stage.umig.discovery_nodes(forget))
    nodes = []
    for n in sub:
        nodes.append({
            "id": n, "discovery": n in discovery,
            "discovery_ancestors": stage.umig.discovery_ancestors(n, forget),
            "original": evaluate(stage, stage.models[n], n, forget),
            "retrain": evaluate(stage, retrained[n], n, forget),
            "fiun": evaluate(stage, fiun["models"][n], n, forget),
            "retrain_cumulative_seconds": rt_cum[n],
            "fiun_cumulative_seconds": fiun["cumulative"][n],
        })
    result = {"nodes": nodes, "fiun_seconds": fiun["seconds"], "retrain_seconds": sum(rt_s.values()),
              "config": cfg.to_dict()}
    result["speedup"] = result["retrain_seconds"] / max(result["fiun_seconds"], 1e-12)
    if cfg.baselines:
        bar.phase("baselines")
        result["baselines"] = run_baselines(stage, sub, forget, cfg.seed)
        for b in result["baselines"].values():
            b["fiun_speedup"] = b["seconds"] / max(result["fiun_seconds"], 1e-12)
    bar.close()
    result["_fiun"] = fiun  # in-process only (tensors); dropped by the JSON writer
    result["_stage"] = stage
    return result


class _progress_bar:
    """A tqdm bar on stderr over the models being trained."""

    def __init__(self, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(desc="training models", unit="model", file=sys.stderr, leave=False)

    def step(self, node: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(node)
            self._bar.update(1)

    def phase(self, name: str) -> None:
        if self._bar is not None:
            self._bar.set_description(name)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
