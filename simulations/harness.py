"""`fiun-sim network`: the paper's experiment on real peers.

The harness only sets the stage and observes: it trains the topology (as `centralized` does), starts
one `fiun-peer` process per peer on loopback, publishes each model through its owner's admin API,
submits ONE unlearning request to one peer and then polls ``GetRequest``. The peers do the
unlearning. Afterwards it exports every new version from its owner (AdminService.ExportModel, with
the owner's admin token) and compares it, tensor by tensor (``torch.equal``), with Algorithm 1 run
in-process on the same stage and settings.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .byom import state_of
from .centralized import SimConfig, Stage, evaluate, model_from_state, prepare, run_on_stage
from .network import publish_stage
from .peers import Peer, PeerCluster
from .progress import NetworkProgress


@dataclass(frozen=True)
class NetworkOptions:
    peers: int | None = None          # None: one peer per model
    peers_per_process: int = 1
    homes: str | None = None          # keep the peers' homes here; None: a temporary folder, removed
    sync_interval: float = 2.0
    timeout: float = 600.0            # for the request to complete on every affected model
    startup_timeout: float = 180.0


def assign_owners(model_ids: list[str], peers: int | None) -> list[list[str]]:
    """Which models each peer owns. One peer per model by default; with fewer peers, the first
    ``peers - 1`` models get a peer each and the last peer owns all the rest (for FL with 6 peers:
    five clients and one server owning w_g, w_a, w_b)."""
    n = len(model_ids) if peers is None else peers
    if not 1 <= n <= len(model_ids):
        raise ValueError(f"--peers must be between 1 and the number of models ({len(model_ids)}), got {n}")
    return [[m] for m in model_ids[:n - 1]] + [model_ids[n - 1:]]


def request_id_for(cfg: SimConfig) -> str:
    return f"fiun-sim-s{cfg.seed}-f{'-'.join(map(str, sorted(set(cfg.forget))))}"


def run_network(cfg: SimConfig, opts: NetworkOptions, progress: NetworkProgress | None = None) -> dict:
    progress = progress or NetworkProgress(enabled=False)
    progress.phase("training models")
    stage = prepare(cfg, progress=progress.trained)
    return run_network_on_stage(stage, cfg, opts, progress)


def run_network_on_stage(stage: Stage, cfg: SimConfig, opts: NetworkOptions,
                         progress: NetworkProgress | None = None) -> dict:
    """The centralized reference and the network run of one request on an already trained stage
    (which the network run leaves unchanged: peers work on copies of the weights)."""
    progress = progress or NetworkProgress(enabled=False)
    forget = tuple(sorted(set(cfg.forget)))
    groups = assign_owners([n.id for n in stage.nodes], opts.peers)
    progress.phase("centralized reference: Algorithm 1, re-training" + (", baselines" if cfg.baselines else ""))
    result = run_on_stage(stage, cfg)
    reference = result.pop("_fiun")
    result.pop("_stage", None)
    if opts.homes:
        root = Path(opts.homes)
        if root.exists() and any(root.iterdir()):
            raise ValueError(f"--keep-homes {root} must be a new or empty folder")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="fiun-sim-"))
    try:
        net = _observe(stage, cfg, opts, groups, root, forget, progress)
    finally:
        if not opts.homes:
            shutil.rmtree(root, ignore_errors=True)
    progress.phase("comparing with the centralized run")
    return _merge(result, reference, net, stage, forget, opts, groups, root)


def _observe(stage: Stage, cfg: SimConfig, opts: NetworkOptions, groups: list[list[str]], root: Path,
             forget: tuple[int, ...], progress: NetworkProgress) -> dict:
    names = [f"peer-{'_'.join(g) if len(g) <= 3 else f'{g[0]}-and-{len(g) - 1}-more'}" for g in groups]
    up: list[str] = []

    def ready(p: Peer) -> None:
        up.append(p.name)
        progress.count("peers up", len(up), len(names))

    progress.phase(f"starting {len(names)} peers"
                   + (f", {opts.peers_per_process} per process" if opts.peers_per_process > 1 else ""))
    with PeerCluster(root, names, sync_interval=opts.sync_interval, startup_timeout=opts.startup_timeout,
                     peers_per_process=opts.peers_per_process, on_ready=ready) as cluster:
        owners = {m: cluster.peers[i] for i, g in enumerate(groups) for m in g}
        progress.phase("publishing models through each owner's admin API")
        published: list[str] = []

        def pub(m: str) -> None:
            published.append(m)
            progress.count("published", len(published), len(owners))

        publish_stage(stage, owners, on_published=pub, timeout=opts.startup_timeout)
        progress.phase("spreading lineage")
        for i, peer in enumerate(cluster.peers):
            cluster.wait_lineage(peer, len(owners), timeout=opts.startup_timeout)
            progress.count("peers know the whole lineage", i + 1, len(cluster.peers))

        submitter = cluster.peers[0]
        rid = request_id_for(cfg)
        progress.phase(f"unlearning {list(forget)} (request sent to {submitter.name})")
        t_submit = time.time()
        reply = submitter.client.request_unlearning(
            list(forget), request_id=rid, settings_json=json.dumps(cfg.settings.to_dict(), sort_keys=True), timeout=60)
        done = cluster.wait_request(submitter, rid, timeout=opts.timeout, on_progress=progress.request)
        t_done = time.time()
        progress.phase("exporting the new versions from their owners (their admin credentials)")
        per_model = {}
        for m in done.models:
            owner = owners[m.model_id]
            own = {p.model_id: p for p in owner.client.get_request(rid, timeout=30).models}[m.model_id]
            # Weights go only to their owner's credential: the harness holds every owner's admin token.
            exported = owner.client.export_model(m.model_id, digest=own.new_digest, timeout=60)
            weights = state_of(exported.format or "zoo", exported.weights)   # .pt2 or safetensors
            per_model[m.model_id] = {
                "owner": owner.name, "old_digest": own.old_digest, "new_digest": own.new_digest,
                "received_at": _since(own.received_at, t_submit), "applied_at": _since(own.applied_at, t_submit),
                "receipt_seen_at": _since(m.applied_at, t_submit), "weights": weights}
        progress.phase("stopping the peers")
        return {"request_id": rid, "submitted_to": submitter.name, "affected": list(reply.affected_models),
                "discovery": list(reply.discovery_models), "models": per_model, "observed_seconds": t_done - t_submit,
                "peers": names, "processes": len(cluster.processes())}


def _since(ts: float, t0: float) -> float | None:
    return None if not ts else ts - t0


def _merge(result: dict, reference: dict, net: dict, stage: Stage, forget: tuple[int, ...],
           opts: NetworkOptions, groups: list[list[str]], root: Path) -> dict:
    """The centralized result's schema, with the FIUn columns taken from the network's models."""
    if set(net["affected"]) != set(reference["subgraph"]):
        raise RuntimeError(f"the peers' unlearning sub-graph {sorted(net['affected'])} differs from the "
                           f"centralized one {sorted(reference['subgraph'])}")
    all_equal = True
    for node in result["nodes"]:
        m = net["models"][node["id"]]
        expected = reference["states"][node["id"]]
        equal = set(m["weights"]) == set(expected) and all(torch.equal(m["weights"][k], v)
                                                            for k, v in expected.items())
        all_equal &= equal
        model = model_from_state(stage, node["id"], m["weights"])
        node["centralized_fiun"] = node["fiun"]
        node["centralized_fiun_cumulative_seconds"] = node["fiun_cumulative_seconds"]
        node["fiun"] = evaluate(stage, model.eval(), node["id"], forget)
        node["fiun_cumulative_seconds"] = m["applied_at"]
        node.update({k: m[k] for k in ("owner", "old_digest", "new_digest", "received_at", "applied_at",
                                       "receipt_seen_at")})
        node["equals_centralized"] = equal
    seen = [m["receipt_seen_at"] for m in net["models"].values() if m["receipt_seen_at"] is not None]
    result["centralized_fiun_seconds"] = result["fiun_seconds"]
    result["fiun_seconds"] = max(seen) if seen else net["observed_seconds"]
    result["speedup"] = result["retrain_seconds"] / max(result["fiun_seconds"], 1e-12)
    for b in result.get("baselines", {}).values():  # speed-ups against the network's FIUn time
        b["centralized_fiun_speedup"] = b["fiun_speedup"]
        b["fiun_speedup"] = b["seconds"] / max(result["fiun_seconds"], 1e-12)
    result["equals_centralized"] = all_equal
    result["mode"] = "network"
    result["network"] = {
        "peers": len(groups), "peers_per_process": opts.peers_per_process, "processes": net["processes"],
        "owners": {net["peers"][i]: g for i, g in enumerate(groups)}, "submitted_to": net["submitted_to"],
        "request_id": net["request_id"], "observed_seconds": net["observed_seconds"],
        "sync_interval": opts.sync_interval, "homes": str(root) if opts.homes else None}
    return result
