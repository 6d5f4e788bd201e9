"""Experiment 1: FIUn on real peers for the four frameworks x {mlp, cnn} x {2} and {2,9}, next to
Algorithm 1 in-process and re-training (the paper's Tables 2-5 shape), plus the label-overlap case
#∩_f (Tables 6-7): two discovery nodes whose forget labels overlap by 0, 1 or 2 of 3 labels.

    .venv/bin/python bench/exp_network_frameworks.py --seed 0 --out results/network.json
    .venv/bin/python bench/network_md.py results/network.json --out RESULTS.md

Every cell is a fresh network (one `fiun-peer` process per model, on loopback): after a request the
models are new versions, so cells cannot share a network. Each (framework, model) stage is trained
once and reused for its label sets. The JSON is rewritten after every cell, so a partial run keeps
what it finished.

The overlap construction (digits has 10 classes, so the paper's 5-label forget sets with 0/20/40/60%
overlap would leave 0-3 labels to retain): d1 is a root whose own data holds R + F1; d2 is fine-tuned
from d1 on R + F2; g is their FedAvg; a and b fine-tune g, then a, on R. F1 = {1,2,3}, F2 = three
labels sharing o of F1 (o = 0, 1, 2: #∩_f = 0, 33, 67%); the request forgets C_f = F1 ∪ F2, and R is
every other label. So d1 and d2 are discovery nodes (d2 also inherits d1) and g, a, b inherit from
both: the multi-root case, where Eq. 5 merges the two Fishers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fiun_peer.core.fiun import FIUnSettings
from simulations.centralized import SimConfig, prepare
from simulations.harness import NetworkOptions, run_network_on_stage
from simulations.report import json_ready, quality

LABEL_SETS = [(2,), (2, 9)]
OVERLAP_K = 3
OVERLAPS = (0, 1, 2)


def overlap_sets(overlap: int, k: int = OVERLAP_K) -> tuple[list[int], list[int]]:
    """F1 = {1..k}; F2 = k labels of which ``overlap`` are F1's last ones."""
    f1 = list(range(1, k + 1))
    f2 = list(range(k + 1 - overlap, 2 * k + 1 - overlap))
    return f1, f2


def overlap_topology(overlap: int, num_classes: int = 10, k: int = OVERLAP_K) -> tuple[dict, tuple[int, ...]]:
    f1, f2 = overlap_sets(overlap, k)
    cf = tuple(sorted(set(f1) | set(f2)))
    r = [c for c in range(num_classes) if c not in cf]
    return {"nodes": [
        {"id": "d1", "labels": sorted(r + f1), "share": 0.3, "epochs": 40},
        {"id": "d2", "parents": ["d1"], "relation": "finetune", "labels": sorted(r + f2), "share": 0.3, "epochs": 10},
        {"id": "g", "parents": ["d1", "d2"], "relation": "aggregate", "labels": r, "share": 0.1, "epochs": 0},
        {"id": "a", "parents": ["g"], "relation": "finetune", "labels": r, "share": 0.15, "epochs": 3},
        {"id": "b", "parents": ["a"], "relation": "finetune", "labels": r, "share": 0.15, "epochs": 3},
    ]}, cf


def _cell(stage, cfg: SimConfig, opts: NetworkOptions, extra: dict | None = None) -> dict:
    t0 = time.time()
    r = json_ready(run_network_on_stage(stage, cfg, opts))
    r["quality"] = quality(r)
    r["wall_seconds"] = time.time() - t0
    r.update(extra or {})
    where = cfg.topology_file or cfg.framework
    print(f"{where:<40} {cfg.model:4s} forget={','.join(map(str, cfg.forget)):12s} "
          f"equal={r['equals_centralized']!s:5s} ok={r['quality']['ok']!s:5s} "
          f"network {r['fiun_seconds']:.2f}s retrain {r['retrain_seconds']:.2f}s ({r['wall_seconds']:.0f}s wall)",
          file=sys.stderr, flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frameworks", default="fl,ddpl,il,tl")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--overlap-models", default="mlp,cnn", help="models for the #∩_f runs ('' to skip)")
    ap.add_argument("--peers-per-process", type=int, default=1)
    ap.add_argument("--out", default="results/network.json")
    ap.add_argument("--topology-dir", default="results/network_topologies",
                    help="where the overlap topologies are written (so each cell can be re-run alone)")
    a = ap.parse_args(argv)
    settings = FIUnSettings()
    opts = NetworkOptions(peers_per_process=a.peers_per_process, sync_interval=2.0)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"seed": a.seed, "settings": settings.to_dict(), "peers_per_process": a.peers_per_process,
           "command": "bench/exp_network_frameworks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "runs": [], "overlap_runs": []}

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1) + "\n")

    t_start = time.time()
    for fw in [f for f in a.frameworks.split(",") if f]:
        for model in [m for m in a.models.split(",") if m]:
            stage = prepare(SimConfig(framework=fw, model=model, seed=a.seed, settings=settings))
            for forget in LABEL_SETS:
                cfg = SimConfig(framework=fw, model=model, seed=a.seed, settings=settings, forget=forget,
                                baselines=False)
                doc["runs"].append(_cell(stage, cfg, opts))
                save()
    tdir = Path(a.topology_dir)
    tdir.mkdir(parents=True, exist_ok=True)
    for model in [m for m in a.overlap_models.split(",") if m]:
        for o in OVERLAPS:
            topo, cf = overlap_topology(o)
            path = tdir / f"overlap-{round(100 * o / OVERLAP_K)}.json"
            path.write_text(json.dumps(topo, indent=1) + "\n")
            cfg = SimConfig(framework=None, topology_file=str(path), model=model, seed=a.seed, settings=settings,
                            forget=cf, baselines=False)
            f1, f2 = overlap_sets(o)
            doc["overlap_runs"].append(_cell(prepare(cfg), cfg, opts, {
                "overlap": {"labels": o, "of": OVERLAP_K, "percent": round(100 * o / OVERLAP_K), "f1": f1, "f2": f2}}))
            save()
    doc["total_seconds"] = time.time() - t_start
    save()
    print(f"wrote {out} ({doc['total_seconds']:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
