"""Bring your own model: FIUn's quality on models in their own formats, next to re-training.

    nice .venv/bin/python bench/exp_formats.py --seed 0 --json results/formats.json --md results/formats.md

For each model (a torchvision ResNet-18, a transformers ViT and BERT with small configs, a torch.export
BatchNorm net), the FL lineage (5 clients -> FedAvg g -> a -> b) is trained here on its data set
(digits32, digits, tokens, digits), then unlearned for one label ({2}) on real peers (one
``fiun-peer`` process per model, models published in their own format, the new versions exported by
their owners and compared with the centralized run: ``equals_centralized``) and for two labels
({2,9}) by the centralized reference, each next to re-training. The quality bar is the zoo's
(RESULTS.md): one label AD_f <= 1% and AD_r >= 95% of the original on every node; two labels AD_f <= 2%
and AD_r >= 85%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fiun_peer.core.fiun import FIUnSettings
from simulations import byom
from simulations.centralized import SimConfig, prepare, run_on_stage
from simulations.harness import NetworkOptions, run_network_on_stage
from simulations.report import write_json

MODELS = ("torchvision:resnet18", "hf-vit-tiny", "hf-bert-tiny", "torch-export:bn-cnn")
LABEL_SETS = ((2,), (2, 9))
COMMAND = "nice .venv/bin/python bench/exp_formats.py --seed {seed} --json results/formats.json --md results/formats.md"
BAR = {1: (1.0, 95.0), 2: (2.0, 85.0)}


def node_row(n: dict, k: int) -> dict:
    o, f = n["original"], n["fiun"]
    pct = None if o["ad_r"] in (None, 0) or f["ad_r"] is None else 100.0 * f["ad_r"] / o["ad_r"]
    max_f, min_pct = BAR[min(k, 2)]
    ok = (f["ad_f"] is None or f["ad_f"] <= max_f) and (pct is None or pct >= min_pct)
    return {"id": n["id"], "original": o, "retrain": n["retrain"], "fiun": f, "ad_r_pct": pct, "bar_met": ok,
            "equals_centralized": n.get("equals_centralized")}


def run(name: str, seed: int, framework: str, network: bool) -> list[dict]:
    cfg = SimConfig(framework=framework, model=name, dataset=byom.default_dataset(name), seed=seed,
                    settings=FIUnSettings(), baselines=False)
    t0 = time.time()
    stage = prepare(cfg)
    train_s = time.time() - t0
    out = []
    for labels in LABEL_SETS:
        c = SimConfig(**{**cfg.__dict__, "forget": labels})
        if network and len(labels) == 1:
            r = run_network_on_stage(stage, c, NetworkOptions(sync_interval=2.0, timeout=900.0, startup_timeout=600.0))
        else:
            r = run_on_stage(stage, c)
            r.pop("_fiun", None)
            r.pop("_stage", None)
        rows = [node_row(n, len(labels)) for n in r["nodes"]]
        out.append({"model": name, "format": byom.format_of(name), "dataset": cfg.dataset, "framework": framework,
                    "forget": list(labels), "nodes": rows, "bar_met": all(x["bar_met"] for x in rows),
                    "mode": r.get("mode", "centralized"), "equals_centralized": r.get("equals_centralized"),
                    "fiun_seconds": r["fiun_seconds"], "centralized_fiun_seconds": r.get("centralized_fiun_seconds"),
                    "retrain_seconds": r["retrain_seconds"], "train_seconds": train_s,
                    "artifact_bytes": len(stage.publication(stage.nodes[0].id)[1]["weights"])})
        print(f"{name} {labels}: bar met {out[-1]['bar_met']}, equals_centralized {out[-1]['equals_centralized']}",
              file=sys.stderr, flush=True)
    return out


def _f(v: float | None, d: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{d}f}"


def render(d: dict) -> str:
    lines = [f"Command (seed {d['seed']}): `{d['command']}`. Lineage: `{d['framework']}` (5 clients -> FedAvg g -> "
             "a -> b), trained here; {2} unlearned on real peers (one `fiun-peer` process per model, each model "
             "published in its own format through its owner's admin API, the new versions exported by their "
             "owners), {2,9} by the centralized reference; re-training beside both. AD_r / AD_f in % on each "
             "model's lineage data; AD_r % = FIUn AD_r as % of the original's.", "",
             "| model | format | data | C_f | mode | equals centralized | original AD_r / AD_f | re-training AD_r / AD_f "
             "| FIUn AD_r / AD_f | min AD_r % of orig. | worst AD_f | bar met | FIUn (s) | re-training (s) |",
             "|" + "---|" * 14]
    for r in d["runs"]:
        def mean(key: str, which: str, rows: list = r["nodes"]) -> float | None:
            vals = [x[which][key] for x in rows if x[which][key] is not None]
            return sum(vals) / len(vals) if vals else None
        pcts = [x["ad_r_pct"] for x in r["nodes"] if x["ad_r_pct"] is not None]
        eq = {True: "yes (8/8)" if len(r["nodes"]) == 8 else "yes", False: "**no**", None: "–"}[r["equals_centralized"]]
        lines.append(
            f"| {r['model']} | {r['format']} | {r['dataset']} | {{{','.join(map(str, r['forget']))}}} | {r['mode']} | "
            f"{eq} | {_f(mean('ad_r', 'original'))} / {_f(mean('ad_f', 'original'))} | "
            f"{_f(mean('ad_r', 'retrain'))} / {_f(mean('ad_f', 'retrain'))} | {_f(mean('ad_r', 'fiun'))} / "
            f"{_f(mean('ad_f', 'fiun'))} | {_f(min(pcts) if pcts else None, 1)} | "
            f"{_f(max(x['fiun']['ad_f'] or 0.0 for x in r['nodes']))} | {'yes' if r['bar_met'] else '**no**'} | "
            f"{_f(r['fiun_seconds'], 3)} | {_f(r['retrain_seconds'], 1)} |")
    met = sum(r["bar_met"] for r in d["runs"])
    lines += ["", f"**{met} of {len(d['runs'])} runs meet the quality bar** (means over the 8 nodes; the bar is "
              "checked on every node)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--framework", default="fl")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--no-network", action="store_true", help="{2} by the centralized reference too")
    ap.add_argument("--json", default="results/formats.json")
    ap.add_argument("--md", default="results/formats.md")
    a = ap.parse_args(argv)
    runs = []
    for name in a.models:
        runs += run(name, a.seed, a.framework, not a.no_network)
        d = {"command": COMMAND.format(seed=a.seed), "seed": a.seed, "framework": a.framework, "runs": runs}
        write_json(d, a.json)
        Path(a.md).write_text(render(d))
    print(Path(a.md).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
