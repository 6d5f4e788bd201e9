"""The paper's *centralized* setting: one process trains every model of a topology, runs
Algorithm 1 for an unlearning request, and runs the baselines on the same graph.

Algorithm 1 here calls the same node-level functions (``fiun_peer.unlearn``) that every peer calls,
so the decentralized network must reproduce these weights to the bit.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from fiun_peer.core.fiun import FIUnSettings, label_mask
from fiun_peer.core.umig import UMIG
from fiun_peer.formats import Classifier, Publication
from fiun_peer.formats.base import Inputs
from fiun_peer.unlearn import apply_fiun_head, as_classifier, node_model_fisher, node_unlearning_fisher
from simulations.data import Dataset, load_dataset

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
    """Algorithm 1 over the whole graph for one request. Model Fishers (Eq. 4) are computed first,
    as at publish time, and excluded from the unlearning time, as in the paper (section 4.4.2)."""
    return Reference(stage, settings).apply("request", forget)


class Reference:
    """Algorithm 1 in one process over a lineage that lives on: requests applied one after another
    and models added later from any version of their parents, as the peers see it. The graph
    questions are the core's (``UMIG`` with versions, the same ones every peer asks), and each model
    changes only through ``fiun_peer.unlearn``, so the network must match it to the bit:

    - a request concerns a model through a parent only if the parent version it derived from had not
      applied that request (``UMIG.unlearning_subgraph(C_f, request_id)``);
    - a discovery node's unlearning Fisher (Eq. 3) is computed on the version it has when it first
      takes the request, and reused by every model that takes it later;
    - the model Fisher (Eq. 4) is that of the model's *current* version, on its own data.
    """

    def __init__(self, stage: Stage, settings: FIUnSettings) -> None:
        self.stage, self.settings = stage, settings
        self.umig = to_umig(stage.nodes)          # our own: versions are added to it
        # What FIUn sees of each model: the zoo module, or (another format) the peer's Classifier.
        inputs = {n.id: fiun_inputs(stage, n.id) for n in stage.nodes}
        self.models: dict[str, nn.Module | Classifier] = {n: m for n, (m, _, _) in inputs.items()}
        self.data: dict[str, tuple[Inputs, torch.Tensor]] = {n: (x, y) for n, (_, x, y) in inputs.items()}
        self.unlearning_fishers: dict[tuple[str, str], dict] = {}    # (request, discovery node) -> F̂
        self._fhat_seconds: dict[tuple[str, str], float] = {}
        self._model_fishers: dict[tuple, dict] = {}                  # (model, version, estimator) -> F_j

    def add_model(self, model_id: str, labels, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor],
                  parents: list[tuple[str, str, int]]) -> None:
        """A model published later: ``parents`` are (parent, relation, the parent version it derived from)."""
        self.umig.add_model(model_id, labels)
        for pid, relation, version in parents:
            self.umig.add_edge(pid, model_id, relation, version)
        self.models[model_id], self.data[model_id] = model, data

    def model_fisher(self, n: str, settings: FIUnSettings | None = None) -> dict:
        """F_j (Eq. 4) of the model's current version on its own data (what a peer caches per
        version and settings)."""
        s = settings or self.settings
        key = (n, self.umig.version(n), s.estimator, s.temperature, s.batch_size)
        if key not in self._model_fishers:
            self._model_fishers[key] = node_model_fisher(self.models[n], *self.data[n], s)
        return self._model_fishers[key]

    def apply(self, request_id: str, forget: tuple[int, ...], settings: FIUnSettings | None = None) -> dict:
        """Every model the request concerns that has not applied it yet applies it now (Algorithm 1),
        with the request's ``settings`` (default: the reference's): returns the run_fiun dict for
        those models, plus ``not_affected`` (models that descend from a discovery node only through
        versions that had applied it)."""
        g, s = self.umig, settings or self.settings
        sub = [n for n in g.unlearning_subgraph(forget, request_id) if request_id not in g.applied(n)]
        if not g.discovery_nodes(forget):
            raise ValueError(f"no model's own data holds labels {list(forget)}: nothing to unlearn")
        model_fishers = {n: self.model_fisher(n, s) for n in sub}
        for d in g.discovery_nodes(forget):                       # Algorithm 1, lines 4-6
            if d in sub and (request_id, d) not in self.unlearning_fishers:
                t0 = time.perf_counter()
                self.unlearning_fishers[request_id, d] = node_unlearning_fisher(self.models[d], *self.data[d],
                                                                                forget, s)
                self._fhat_seconds[request_id, d] = time.perf_counter() - t0
        fhat = {d: f for (rid, d), f in self.unlearning_fishers.items() if rid == request_id}
        fhat_s = {d: t for (rid, d), t in self._fhat_seconds.items() if rid == request_id}
        states, heads, upd_s = {}, {}, {}
        for n in sub:                                             # lines 7-11
            model = self.models[n]
            t0 = time.perf_counter()
            heads[n] = apply_fiun_head(model, model_fishers[n],
                                       [fhat[d] for d in g.discovery_ancestors(n, forget, request_id)], s,
                                       forget_labels=forget)
            upd_s[n] = time.perf_counter() - t0  # the new head is the update; the full state is for evaluation
            states[n] = {**{k: v.clone() for k, v in as_classifier(model).state_dict().items()}, **heads[n]}
        models = {n: model_from_state(self.stage, n, st) for n, st in states.items()}
        cumulative = {n: max(fhat_s[d] for d in g.discovery_ancestors(n, forget, request_id)) + upd_s[n]
                      for n in sub}
        seconds = sum(fhat_s[d] for d in fhat_s if d in sub) + sum(upd_s.values())
        for n in sub:                                             # the new versions
            self.models[n] = _next_version(self.models[n], heads[n]) if byom.is_byom(self.stage.train_cfg.model) \
                else models[n]
            g.add_version(n, request_id)
        not_affected = [n for n in g.unlearning_subgraph(forget) if n not in g.unlearning_subgraph(forget, request_id)]
        return {"subgraph": sub, "models": models, "states": states, "model_fishers": model_fishers,
                "unlearning_fishers": {d: fhat[d] for d in fhat if d in sub}, "seconds": seconds,
                "cumulative": cumulative, "not_affected": not_affected}


def _next_version(model: nn.Module | Classifier, head: dict[str, torch.Tensor]) -> Classifier:
    """A model in another format with its new head: what its peer loads for the next request."""
    new = copy.deepcopy(as_classifier(model))
    new.set_head(head)
    return new


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
