"""FIUn vs re-training on a workload shaped like the paper's: ResNet-18 on a CIFAR-100-shaped set, FL graph.

    nice .venv/bin/python bench/exp_cifar_speedup.py --seed 0 --network --json results/bench_cifar_speedup.json

Data: ``cifar100-shaped`` (simulations.data: 3x32x32, 100 classes, 20,000 training and 5,000 test
samples built locally from the real digits). Model: torchvision ResNet-18 (11.2 M parameters,
published as ``torchvision`` + safetensors). Graph: the paper's FL lineage (``--framework fl``: 5
clients with 16% of every class each -> FedAvg ``g`` -> ``a`` -> ``b`` with 7.5% each).

Re-training is measured per epoch and multiplied by the epoch count, stated plainly: every model is
trained for ONE epoch here (re-training too, on its own data without the forgotten class, in the
sub-graph's order), the measured seconds of each model's one epoch are multiplied by that model's
epochs in the FL topology (clients 40, a and b 20; g is a FedAvg, counted once). Training the
whole graph for real would take this 2-core machine hours. FIUn is measured for real on the same
models: in one process (Algorithm 1: Eq. 3 on every discovery model's forget data, Eqs. 5-6 on
every model; model Fishers excluded, computed at publication as in the paper §4.4.2), and, with
``--network``, on real peers (one ``fiun-peer`` process per model, from the request to the last
receipt). Speed-up = re-training time / FIUn time for the whole sub-graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.bench_timing import write_json
from fiun_peer.core.fiun import FIUnSettings
from simulations.centralized import SimConfig, prepare, run_on_stage
from simulations.harness import NetworkOptions, run_network_on_stage
from simulations.report import machine
from simulations.topology import builtin

MODEL, DATASET = "torchvision:resnet18", "cifar100-shaped"
COMMAND = ("nice .venv/bin/python bench/exp_cifar_speedup.py --seed {seed}{net} --json "
           "results/bench_cifar_speedup.json")
PAPER_SPEEDUP = 100


def one_epoch_topology(framework: str, num_classes: int, folder: Path) -> tuple[Path, dict[str, int]]:
    """The framework's topology with every training run cut to one epoch; returns it and the real
    epoch counts."""
    nodes = builtin(framework, num_classes)
    epochs = {n.id: n.epochs for n in nodes}
    spec = {"nodes": [{"id": n.id, "parents": list(n.parents), "relation": n.relation, "labels": list(n.labels),
                       "share": n.share, "epochs": min(n.epochs, 1)} for n in nodes]}
    path = folder / f"{framework}-one-epoch.json"
    path.write_text(json.dumps(spec))
    return path, epochs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--framework", default="fl")
    ap.add_argument("--forget", type=int, nargs="*", default=[2])
    ap.add_argument("--network", action="store_true", help="also unlearn on real peers (one process per model)")
    ap.add_argument("--json", default="results/bench_cifar_speedup.json")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        topo, epochs = one_epoch_topology(a.framework, 100, Path(tmp))
        cfg = SimConfig(framework=None, topology_file=str(topo), model=MODEL, dataset=DATASET,
                        forget=tuple(a.forget), seed=a.seed, settings=FIUnSettings(), baselines=False)
        print("training one epoch per model ...", file=sys.stderr, flush=True)
        stage = prepare(cfg)
        print("unlearning and re-training (one epoch per model) ...", file=sys.stderr, flush=True)
        if a.network:
            r = run_network_on_stage(stage, cfg, NetworkOptions(sync_interval=2.0, timeout=1800.0,
                                                                startup_timeout=900.0))
        else:
            r = run_on_stage(stage, cfg)
    parents = {n.id: list(n.parents) for n in stage.nodes}
    rows, total = [], 0.0
    cum = {n["id"]: n["retrain_cumulative_seconds"] for n in r["nodes"]}
    for n in r["nodes"]:
        per_epoch = cum[n["id"]] - max((cum[p] for p in parents[n["id"]] if p in cum), default=0.0)
        e = max(epochs[n["id"]], 1)     # a FedAvg (0 epochs) is counted once
        total += per_epoch * e
        rows.append({"id": n["id"], "samples": len(stage.data_idx[n["id"]]), "retrain_one_epoch_s": per_epoch,
                     "epochs": epochs[n["id"]], "retrain_estimate_s": per_epoch * e,
                     "train_one_epoch_s": stage.train_seconds[n["id"]], "original": n["original"],
                     "fiun": n["fiun"], "retrain_one_epoch": n["retrain"],
                     "equals_centralized": n.get("equals_centralized")})
    central = r.get("centralized_fiun_seconds", r["fiun_seconds"])
    out = {"command": COMMAND.format(seed=a.seed, net=" --network" if a.network else ""), "seed": a.seed,
           "model": MODEL, "dataset": DATASET, "framework": a.framework, "forget": a.forget,
           "parameters": sum(p.numel() for p in stage.models[stage.nodes[0].id].parameters()),
           "train_samples": int(stage.ds.x_train.shape[0]), "classes": stage.ds.num_classes,
           "nodes": rows, "retrain_estimate_s": total, "retrain_one_epoch_total_s": r["retrain_seconds"],
           "fiun_in_process_s": central, "speedup_in_process": total / central,
           "fiun_network_s": r["fiun_seconds"] if a.network else None,
           "speedup_network": total / r["fiun_seconds"] if a.network else None,
           "equals_centralized": r.get("equals_centralized"), "paper_speedup": PAPER_SPEEDUP,
           "network": r.get("network"), "machine": machine()}
    write_json(out, a.json)
    print(json.dumps({k: v for k, v in out.items() if k not in ("nodes", "machine", "network")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
