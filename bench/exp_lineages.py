"""FIUn on realistic lineages (issue 13): seeded random lineages x forget sets x models.

    .venv/bin/python bench/exp_lineages.py --lineages 100 --models mlp,cnn --seed 0 --jobs 2 \
        --out results/lineages.json
    .venv/bin/python bench/exp_lineages.py --report results/lineages.json --png results/lineages.png

Lineage i is ``simulations.topology.random_lineage(seed + i)``: 1-3 roots on every label, 5-15
narrow descendants (2-5 labels each) by every relation, multi-root and imbalanced paths, depth up
to 8. Each (lineage, model) is trained once; then for forget sets of 1, 2 and 4 labels (drawn from
the lineage's seed) every model of the unlearning sub-graph is measured after FIUn with the default
settings, FIUn ``--paper``, the ablation variants below, re-training (the gold standard) and the
three baselines (``--baselines-every K`` / ``--retrain-every K``: on every K-th lineage only, as
they dominate the time; the CNN run uses both, see RESULTS.md).

Per node: AD_r as % of the original model's and AD_f, on the node's lineage data (its own and its
ancestors' training samples: the paper's convention) and on the held-out test split (the labels
its lineage knows). Inherited nodes (own data without a forget label) are reported apart from
discovery nodes. ``--report`` prints the RESULTS.md section and draws the PNG from the JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import torch

from fiun_peer.core.fiun import FIUnSettings, center_head, fiun_update
from fiun_peer.unlearn import head_params, node_model_fisher, node_unlearning_fisher
from simulations import baselines as bl
from simulations.centralized import SimConfig, prepare
from simulations.metrics import accuracy, split_by_labels
from simulations.training import node_seed, own_data, train_graph

FORGET_SIZES = (1, 2, 4)
BARS = {1: (1.0, 95.0, 85.0), 2: (2.0, 85.0, 75.0), 4: (2.0, 85.0, 75.0)}  # AD_f max, AD_r % bar, floor
DEFAULT = FIUnSettings()
PLOTTED = ("fiun", "paper", "old_default", "old_default+inherit", "retrain", "finetune", "gradient_ascent", "distill")
OLD_DEFAULT = replace(DEFAULT, rows="all", gamma=3.0)  # the default before issue 13


def _variants() -> dict[str, dict]:
    """FIUn variants of the ablation: settings, whether the head is centred over *all* classes (the
    old gauge) and whether the model Fisher is merged with the ancestors' (Eq. 5 on model Fishers)."""
    return {
        "fiun": {"settings": DEFAULT},
        "paper": {"settings": FIUnSettings.paper()},
        "old_default": {"settings": OLD_DEFAULT},
        "old_default+inherit": {"settings": OLD_DEFAULT, "inherit": True},
        "rows_g3_center_all": {"settings": replace(DEFAULT, gamma=3.0), "center_all": True},
        "rows_g3": {"settings": replace(DEFAULT, gamma=3.0)},
        "rows_g1": {"settings": replace(DEFAULT, gamma=1.0)},
        "rows_g0_center_all": {"settings": DEFAULT, "center_all": True},
    }


def forget_sets(lineage_seed: int, num_classes: int = 10) -> list[tuple[int, ...]]:
    rng = random.Random(f"fiun-forget:{lineage_seed}")
    return [tuple(sorted(rng.sample(range(num_classes), k))) for k in FORGET_SIZES]


def _light_eval(stage, model, node: str, forget: tuple[int, ...]) -> dict:
    """AD_r / AD_f on lineage data and test split (no MIA: the variants need only accuracies)."""
    ds, g = stage.ds, stage.umig
    ids = [node, *g.ancestors(node)]
    idx = sorted(i for a in ids for i in stage.data_idx[a])
    (fx, fy), (rx, ry) = split_by_labels(ds.x_train[idx], ds.y_train[idx], forget)
    known = sorted({c for a in ids for c in g.labels(a)})
    tm = torch.isin(ds.y_test, torch.tensor(known))
    (tfx, tfy), (trx, try_) = split_by_labels(ds.x_test[tm], ds.y_test[tm], forget)
    return {"ad_r": accuracy(model, rx, ry), "ad_f": accuracy(model, fx, fy),
            "test_ad_r": accuracy(model, trx, try_), "test_ad_f": accuracy(model, tfx, tfy)}


def _with_head(model: torch.nn.Module, head: dict[str, torch.Tensor]) -> torch.nn.Module:
    import copy

    from fiun_peer.core.fisher import find_head

    m = copy.deepcopy(model)
    name, _ = find_head(m)
    state = m.state_dict()
    for k, v in head.items():
        state[f"{name}.{k}"] = v
    m.load_state_dict(state)
    return m.eval()


def _fiun_variant(stage, forget, spec: dict, cache: dict) -> dict[str, torch.nn.Module]:
    s: FIUnSettings = spec["settings"]
    g, ds = stage.umig, stage.ds
    key = (s.estimator, s.temperature, s.batch_size, s.per_label)
    if key not in cache:
        cache[key] = {
            "mf": {n: node_model_fisher(stage.models[n], *own_data(ds, stage.data_idx[n]), s) for n in g.models()},
            "fhat": {d: node_unlearning_fisher(stage.models[d], *own_data(ds, stage.data_idx[d]), forget, s)
                     for d in g.discovery_nodes(forget)}}
    mf, fhat = cache[key]["mf"], cache[key]["fhat"]
    out = {}
    for n in g.unlearning_subgraph(forget):
        params = head_params(stage.models[n])
        settings = s
        if spec.get("center_all") and s.center:
            params, settings = center_head(params), replace(s, center=False)
        ancestors = [mf[a] for a in g.ancestors(n)] if spec.get("inherit") else ()
        head = fiun_update(params, mf[n], [fhat[d] for d in g.discovery_ancestors(n, forget)], settings,
                           forget_labels=forget, ancestor_model_fishers=ancestors)
        out[n] = _with_head(stage.models[n], head)
    return out


def _baselines(stage, forget, seed: int) -> dict[str, dict[str, torch.nn.Module]]:
    ds, g, bcfg, cfg = stage.ds, stage.umig, bl.BaselineConfig(), stage.train_cfg
    out: dict[str, dict[str, torch.nn.Module]] = {name: {} for name in bl.BASELINES}
    for n in g.unlearning_subgraph(forget):
        (fx, fy), (rx, ry) = split_by_labels(*own_data(ds, stage.data_idx[n]), forget)
        if fx.shape[0] == 0:
            parts = [split_by_labels(*own_data(ds, stage.data_idx[d]), forget)[0]
                     for d in g.discovery_ancestors(n, forget)]
            fx, fy = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        s = node_seed(seed + 7, n)
        out["finetune"][n] = bl.finetune(stage.models[n], rx, ry, seed=s, cfg=cfg, bcfg=bcfg)
        out["gradient_ascent"][n] = bl.gradient_ascent(stage.models[n], fx, fy, seed=s, cfg=cfg, bcfg=bcfg)
        out["distill"][n] = bl.distill(stage.models[n], rx, ry, ds, seed=s, cfg=cfg, bcfg=bcfg, node_id=n)
    return out


def run_lineage(job: tuple[int, str, bool, bool]) -> list[dict]:
    """Every forget set on one (lineage, model): a list of per-node rows."""
    lineage_seed, model, with_baselines, with_retrain = job
    torch.set_num_threads(1)
    cfg = SimConfig(framework=None, random_lineage=lineage_seed, model=model, seed=lineage_seed,
                    settings=DEFAULT, baselines=False)
    t0 = time.perf_counter()
    stage = prepare(cfg)
    g = stage.umig
    rows = []
    for forget in forget_sets(lineage_seed, stage.ds.num_classes):
        sub = g.unlearning_subgraph(forget)
        if not sub:
            continue
        methods: dict[str, dict[str, torch.nn.Module]] = {"original": {n: stage.models[n] for n in sub}}
        cache: dict = {}
        for name, spec in _variants().items():
            methods[name] = _fiun_variant(stage, forget, spec, cache)
        if with_retrain:
            methods["retrain"], _ = train_graph(stage.nodes, stage.data_idx, stage.ds, seed=lineage_seed,
                                                cfg=stage.train_cfg, exclude_labels=forget, only=set(sub),
                                                base=stage.models)
        if with_baselines:
            methods.update(_baselines(stage, forget, lineage_seed))
        discovery = set(g.discovery_nodes(forget))
        for n in sub:
            spec = next(s for s in stage.nodes if s.id == n)
            row = {"lineage": lineage_seed, "model": model, "forget": list(forget), "node": n,
                   "role": "discovery" if n in discovery else "inherited", "relation": spec.relation,
                   "own_labels": list(spec.labels), "depth": g.depth(n), "parents": list(spec.parents),
                   "forget_share_of_own_data": _forget_share(stage, n, forget), "methods": {}}
            for name, models in methods.items():
                row["methods"][name] = _light_eval(stage, models[n], n, forget)
            rows.append(row)
    print(f"lineage {lineage_seed} {model}: {len(g)} models, {len(rows)} rows in {time.perf_counter() - t0:.0f}s",
          file=sys.stderr, flush=True)
    return rows


def _forget_share(stage, n: str, forget: tuple[int, ...]) -> float:
    y = stage.ds.y_train[stage.data_idx[n]]
    return round(float(torch.isin(y, torch.tensor(forget)).float().mean()), 3)


# -- report ------------------------------------------------------------------------------------------


def retained_pct(row: dict, method: str, split: str = "") -> float | None:
    o, m = row["methods"]["original"][f"{split}ad_r"], row["methods"][method][f"{split}ad_r"]
    return None if not o or m is None else 100.0 * m / o


def meets_bar(row: dict, method: str, split: str = "") -> bool:
    max_f, bar, _ = BARS[len(row["forget"])]
    pct, adf = retained_pct(row, method, split), row["methods"][method][f"{split}ad_f"]
    return (adf is None or adf <= max_f) and (pct is None or pct >= bar)


def summarize(rows: list[dict], method: str, split: str = "") -> dict:
    pcts = [p for r in rows if (p := retained_pct(r, method, split)) is not None]
    adfs = [a for r in rows if (a := r["methods"][method][f"{split}ad_f"]) is not None]
    return {"n": len(rows), "meets": sum(meets_bar(r, method, split) for r in rows) / max(len(rows), 1),
            "median_pct": statistics.median(pcts) if pcts else None, "min_pct": min(pcts) if pcts else None,
            "max_ad_f": max(adfs) if adfs else None,
            "median_ad_f": statistics.median(adfs) if adfs else None}


def acceptance(rows: list[dict], method: str = "fiun") -> list[str]:
    """The issue's bar per forget size, for all sub-graph nodes and for inherited nodes alone."""
    lines = []
    for k in FORGET_SIZES:
        max_f, bar, floor = BARS[k]
        for who, sel in (("all", rows), ("inherited", [r for r in rows if r["role"] == "inherited"])):
            part = [r for r in sel if len(r["forget"]) == k]
            if not part:
                continue
            s = summarize(part, method)
            ok = s["meets"] >= 0.95 and (s["min_pct"] is None or s["min_pct"] >= floor)
            lines.append(f"| {k} | {who} | {s['n']} | {100 * s['meets']:.1f}% | {s['min_pct']:.1f}% (floor {floor:.0f}%) "
                         f"| {s['max_ad_f']:.2f} | {'met' if ok else 'NOT met'} |")
    return lines


def report(docs: list[dict], png: str | None) -> str:
    rows = [r for doc in docs for r in doc["rows"]]
    methods = list(dict.fromkeys(m for r in rows for m in r["methods"] if m != "original"))
    out = [f"Command: `{doc['command']}` ({len(doc['seeds'])} lineages, seeds {doc['seeds'][0]}..{doc['seeds'][-1]}"
           f"{'' if doc.get('finished', True) else ' (stopped before the rest)'}, models {', '.join(doc['models'])}; "
           f"{len(doc['rows'])} node rows; re-training on {doc.get('retrain_lineages', len(doc['seeds']))} and baselines "
           f"on {doc['baseline_lineages']} of them; "
           f"{doc['seconds']:.0f} s on {doc['machine']})." for doc in docs]
    out += ["",
           "Acceptance (default settings, lineage data): share of sub-graph nodes with AD_f and AD_r % of "
           "original inside the bar (1 label: AD_f <= 1%, AD_r >= 95%; 2 and 4 labels: AD_f <= 2%, AD_r >= 85%), "
           "the lowest AD_r %, the highest AD_f:", "",
           "| labels | nodes | n | within bar | lowest AD_r % | highest AD_f | verdict |", "|---|---|---|---|---|---|---|",
           *acceptance(rows), ""]
    out += ["Every method, per forget size and role (lineage data; test split in brackets): share within the bar, "
            "median / lowest AD_r % of original, highest AD_f.", "",
            "| method | labels | role | n | within bar | AD_r % median / min | max AD_f | test: within bar |",
            "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        for k in FORGET_SIZES:
            for role in ("inherited", "discovery"):
                part = [r for r in rows if len(r["forget"]) == k and r["role"] == role and m in r["methods"]]
                if not part:
                    continue
                s, t = summarize(part, m), summarize(part, m, "test_")
                out.append(f"| {m} | {k} | {role} | {s['n']} | {100 * s['meets']:.1f}% | "
                           f"{_f(s['median_pct'])} / {_f(s['min_pct'])} | {_f(s['max_ad_f'])} | {100 * t['meets']:.1f}% |")
    if png:
        _plot(rows, [m for m in methods if m in PLOTTED], png)
        out += ["", f"![AD_r % of original and AD_f per method]({Path(png).name})"]
    return "\n".join(out)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _plot(rows: list[dict], methods: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(FORGET_SIZES), figsize=(6 * len(FORGET_SIZES), 9), squeeze=False)
    for j, k in enumerate(FORGET_SIZES):
        for i, (what, getter) in enumerate((("AD_r % of original", retained_pct),
                                            ("AD_f %", lambda r, m: r["methods"][m]["ad_f"]))):
            ax = axes[i][j]
            data, labels = [], []
            for m in methods:
                for role in ("inherited", "discovery"):
                    vals = [v for r in rows if len(r["forget"]) == k and r["role"] == role and m in r["methods"]
                            and (v := getter(r, m)) is not None]
                    if vals:
                        data.append(vals)
                        labels.append(f"{m} ({role[0]})")
            ax.boxplot(data, orientation="horizontal", whis=(0, 100))
            ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
            ax.set_title(f"{k} label{'s' if k > 1 else ''}: {what}")
            bar = BARS[k][1] if i == 0 else BARS[k][0]
            ax.axvline(bar, color="red", lw=0.8, ls="--")
    fig.suptitle("Random lineages: FIUn (default), --paper, ablations, re-training, baselines "
                 "((i) inherited, (d) discovery nodes)")
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineages", type=int, default=100, help="number of random lineages (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="first lineage seed (default 0)")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--baselines-every", type=int, default=1, metavar="K",
                    help="run the three baselines on every K-th lineage (default 1: all); 0 = never")
    ap.add_argument("--retrain-every", type=int, default=1, metavar="K",
                    help="re-train on every K-th lineage (default 1: all); 0 = never")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, one torch thread each (default 1)")
    ap.add_argument("--out", default="results/lineages.json")
    ap.add_argument("--report", metavar="JSON", nargs="+",
                    help="print the RESULTS.md section from finished runs (their rows are pooled)")
    ap.add_argument("--png", help="with --report: also draw the distributions here")
    ap.add_argument("--results-md", metavar="PATH",
                    help="with --report: write the section into PATH (e.g. RESULTS.md) between "
                         "<!-- section:lineages --> markers instead of printing it")
    a = ap.parse_args(argv)
    if a.report:
        docs = [json.loads(Path(p).read_text()) for p in a.report]
        section = report(docs, a.png)
        if a.results_md:
            from simulations.observe import write_section

            write_section("lineages", section, Path(a.results_md))
        else:
            print(section)
        return 0
    seeds = list(range(a.seed, a.seed + a.lineages))
    models = a.models.split(",")
    every = lambda k, s: k > 0 and (s - a.seed) % k == 0  # noqa: E731
    jobs = [(s, m, every(a.baselines_every, s), every(a.retrain_every, s)) for m in models for s in seeds]
    t0 = time.time()
    rows: list[dict] = []
    run: Callable = map
    if a.jobs > 1:
        pool = get_context("spawn").Pool(a.jobs)
        run = pool.imap
    import os
    import platform

    doc = {"command": " ".join(["bench/exp_lineages.py", *(argv if argv is not None else sys.argv[1:])]),
           "seeds": [], "models": models, "baseline_lineages": 0, "retrain_lineages": 0, "settings": DEFAULT.to_dict(),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "finished": False, "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for job, part in zip(jobs, run(run_lineage, jobs), strict=True):
        rows.extend(part)
        doc["seeds"] = sorted({*doc["seeds"], job[0]})
        doc["baseline_lineages"] += job[2]
        doc["retrain_lineages"] += job[3]
        doc["seconds"] = time.time() - t0
        # Written after every lineage, so a stopped run still leaves what it measured.
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(out)
    doc["finished"] = True
    out.write_text(json.dumps(doc))
    print(f"wrote {a.out} ({len(rows)} rows, {doc['seconds']:.0f} s)", file=sys.stderr)
    print("\n".join(acceptance(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
