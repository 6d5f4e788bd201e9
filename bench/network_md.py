"""Write experiment 1 (FIUn on real peers) into RESULTS.md and draw its plots, from the JSON of
bench/exp_network_frameworks.py:

    .venv/bin/python bench/network_md.py results/network.json --out RESULTS.md

Only the text between ``<!-- section:network -->`` and ``<!-- /section:network -->`` is replaced
(the section is appended after ``<!-- network results below -->`` the first time); the rest of the
file, including other sections, is kept. Plots: results/network.png, results/network_overlap.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from simulations.report import RESULTS_MARKER, section_markers, write_section

MARKER = RESULTS_MARKER
BEGIN, END = section_markers("network")
PAPER_NODES = ("g", "a", "b")


def _mean(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def _labels(forget) -> str:
    return "{" + ",".join(map(str, forget)) + "}"


def cell_summary(r: dict) -> dict:
    """Means over the sub-graph's nodes, and the times, of one network run."""
    nodes = r["nodes"]
    m = {k: {x: _mean(n[k][x] for n in nodes) for x in ("ad_r", "ad_f")}
         for k in ("original", "retrain", "fiun", "centralized_fiun")}
    cfg = r["config"]
    return {"where": cfg.get("framework") or Path(cfg.get("topology_file") or "?").stem, "model": cfg["model"],
            "forget": cfg["forget"], "peers": r["network"]["peers"], "nodes": len(nodes),
            "equal": r["equals_centralized"], "equal_nodes": sum(n["equals_centralized"] for n in nodes),
            "ok": r.get("quality", {}).get("ok"), **{f"{k}_{x}": v[x] for k, v in m.items() for x in v},
            "network_s": r["fiun_seconds"], "inprocess_s": r["centralized_fiun_seconds"],
            "retrain_s": r["retrain_seconds"], "speedup": r["speedup"],
            "max_recv": max((n["received_at"] or 0.0) for n in nodes),
            "max_applied": max((n["applied_at"] or 0.0) for n in nodes)}


def summary_table(runs: list[dict]) -> str:
    rows = ["| framework | model | C_f | peers | equals centralized | original AD_r / AD_f | re-training AD_r / AD_f "
            "| FIUn on peers AD_r / AD_f | bar met | FIUn in-process (s) | FIUn on peers: request → last receipt (s) "
            "| re-training (s) | re-training / peers |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = cell_summary(r)
        rows.append(
            f"| {c['where']} | {c['model']} | {_labels(c['forget'])} | {c['peers']} | "
            f"{'yes' if c['equal'] else '**no**'} ({c['equal_nodes']}/{c['nodes']}) | "
            f"{_f(c['original_ad_r'])} / {_f(c['original_ad_f'])} | {_f(c['retrain_ad_r'])} / {_f(c['retrain_ad_f'])} | "
            f"{_f(c['fiun_ad_r'])} / {_f(c['fiun_ad_f'])} | {'yes' if c['ok'] else '**no**'} | "
            f"{c['inprocess_s']:.4f} | {c['network_s']:.2f} | {c['retrain_s']:.2f} | {c['speedup']:.1f}× |")
    return "\n".join(rows)


def _node_order(runs: list[dict]) -> list[str]:
    ids = [n["id"] for n in runs[0]["nodes"]]
    paper = [i for i in PAPER_NODES if i in ids]
    return paper if paper else ids


def node_table(runs: list[dict], key_label: str, key, ids: list[str] | None = None) -> str:
    """The paper's per-node layout (Tables 2-7): one row per request and metric, columns per node for
    original / re-training / FIUn on peers, then cumulative times (re-training vs FIUn applied at the
    node's owner, seconds after the request)."""
    ids = ids or _node_order(runs)
    head = [f"orig. w_{i}" for i in ids] + [f"retr. w_{i}" for i in ids] + [f"FIUn w_{i}" for i in ids]
    head += [f"t retr. w_{i}" for i in ids] + [f"t FIUn w_{i}" for i in ids]
    rows = [f"| {key_label} | metric | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for r in runs:
        by = {n["id"]: n for n in r["nodes"]}
        for metric, label in (("ad_r", "AD_r ↑"), ("ad_f", "AD_f ↓")):
            cells = [_f(by[i][k][metric]) if i in by else "–" for k in ("original", "retrain", "fiun") for i in ids]
            if metric == "ad_r":
                cells += [_f(by[i]["retrain_cumulative_seconds"], ".3f") if i in by else "–" for i in ids]
                cells += [_f(by[i]["applied_at"], ".3f") if i in by else "–" for i in ids]
            else:
                cells += [""] * (2 * len(ids))
            rows.append(f"| {key(r) if metric == 'ad_r' else ''} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(doc: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = doc["runs"]
    if runs:
        cs = [cell_summary(r) for r in runs]
        names = [f"{c['where']}/{c['model']}\n{_labels(c['forget'])}" for c in cs]
        x = range(len(cs))
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.75 * len(cs)), 8), sharex=True)
        w = 0.2
        for j, (k, lab) in enumerate((("original", "original"), ("retrain", "re-training"), ("fiun", "FIUn on peers"))):
            ax1.bar([i + (j - 1) * w for i in x], [c[f"{k}_ad_r"] for c in cs], w, label=f"{lab} AD_r")
            ax1.scatter([i + (j - 1) * w for i in x], [c[f"{k}_ad_f"] or 0 for c in cs], marker="v", color="k",
                        s=12, zorder=3, label="AD_f (triangles)" if j == 0 else None)
        ax1.set_ylabel("mean accuracy over the sub-graph (%)")
        ax1.set_ylim(0, 105)
        ax1.legend(fontsize=7, ncol=4, loc="lower left")
        ax1.set_title(f"FIUn on real peers vs re-training (digits, seed {doc['seed']})")
        ax2.bar([i - w for i in x], [c["retrain_s"] for c in cs], w, label="re-training (sequential)")
        ax2.bar(list(x), [c["network_s"] for c in cs], w, label="FIUn on peers: request → last receipt")
        ax2.bar([i + w for i in x], [c["inprocess_s"] for c in cs], w, label="FIUn in-process (Algorithm 1)")
        ax2.set_yscale("log")
        ax2.set_ylabel("seconds (log)")
        ax2.legend(fontsize=7)
        ax2.set_xticks(list(x))
        ax2.set_xticklabels(names, fontsize=7)
        fig.tight_layout()
        p = out_dir / "network.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    ov = doc.get("overlap_runs") or []
    if ov:
        models = sorted({r["config"]["model"] for r in ov})
        fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rs = sorted((r for r in ov if r["config"]["model"] == model), key=lambda r: r["overlap"]["percent"])
            pct = [r["overlap"]["percent"] for r in rs]
            for nid, marker in (("g", "o"), ("a", "s"), ("b", "^")):
                by = [{n["id"]: n for n in r["nodes"]}.get(nid) for r in rs]
                ax.plot(pct, [n["original"]["ad_f"] if n else None for n in by], marker=marker, linestyle="--",
                        alpha=0.5, label=f"w_{nid} original AD_f")
                ax.plot(pct, [n["fiun"]["ad_r"] if n else None for n in by], marker=marker, linestyle="-",
                        label=f"w_{nid} FIUn AD_r")
                ax.plot(pct, [n["fiun"]["ad_f"] if n else None for n in by], marker=marker, linestyle=":",
                        label=f"w_{nid} FIUn AD_f")
            ax.set_xlabel("#∩_f: overlap of the two discovery nodes' forget labels (%)")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"{model}: multi-root unlearning on peers")
            ax.set_xticks(pct)
            ax.legend(fontsize=6)
        fig.tight_layout()
        p = out_dir / "network_overlap.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def render(doc: dict, plots: list[str]) -> str:
    runs, ov = doc["runs"], doc.get("overlap_runs") or []
    allr = runs + ov
    equal = sum(r["equals_centralized"] for r in allr)
    met = sum(bool(r.get("quality", {}).get("ok")) for r in allr)
    lines = [BEGIN, "## Decentralized: FIUn on real peers (experiment 1)", "",
             f"Generated by `bench/network_md.py` from `results/network.json`, made by (seed {doc['seed']}):", "",
             "```", ".venv/bin/python bench/exp_network_frameworks.py --seed 0 --out results/network.json",
             ".venv/bin/python bench/network_md.py results/network.json --out RESULTS.md", "```", "",
             "Every cell is a fresh network on loopback with one `fiun-peer` process per model "
             f"({'one peer per process' if doc.get('peers_per_process', 1) == 1 else str(doc['peers_per_process']) + ' peers per process'}). "
             "The harness (`fiun-sim network`) trains the stage, publishes each model through its owner's admin API, "
             "sends ONE request to one peer and only polls; the peers locate, announce Fishers, pull, merge, dampen "
             "and sign receipts. Each cell can be re-run alone, e.g. `fiun-sim network --framework ddpl --model cnn "
             "--forget 2,9 --seed 0 --no-baselines`. FIUn settings: `FIUnSettings()` defaults (as in the tables above). "
             "AD_r / AD_f are means over the unlearning sub-graph, on each model's training data as above; the FIUn "
             "columns evaluate the weights fetched back from the peers. *Equals centralized*: every node's new weights "
             "are `torch.equal` to Algorithm 1 run in-process on the same stage. Times: re-training is the sequential "
             "sum of the sub-graph's training times; *FIUn on peers* runs from sending the request to the last receipt "
             "reaching the peer it was sent to (pushes, Fisher pulls over gRPC and the peers' polling included); "
             "*in-process* is Algorithm 1's compute alone. Wall-clock seconds on a shared 2-core machine that other "
             "jobs were loading, so compare within a row.", "",
             f"**{equal} of {len(allr)} network runs equal the centralized run bit for bit; {met} of {len(allr)} "
             "meet the quality bar.**", ""]
    if allr:
        net = [r["fiun_seconds"] for r in allr]
        rt = [r["retrain_seconds"] for r in allr]
        alg = [r["centralized_fiun_seconds"] for r in allr]
        lines += [f"FIUn on peers took {min(net):.2f}–{max(net):.2f} s from request to last receipt, re-training "
                  f"{min(rt):.2f}–{max(rt):.2f} s; Algorithm 1's compute alone is {min(alg):.3f}–{max(alg):.3f} s, so "
                  "on loopback the network time is latency: direct gRPC pushes of the request, the announcements "
                  "and the receipts, and Fisher pulls (each peer applies as soon as the Fishers it needs are in, "
                  "whatever its depth; see the per-node times). Re-training times swing with the machine's load, "
                  "so the speed-up column is indicative only.", ""]
    if runs:
        lines += ["### Frameworks × models × label sets (paper Tables 2–5 shape)", "", summary_table(runs), ""]
        for p in plots:
            if p.endswith("network.png"):
                lines += [f"![FIUn on peers vs re-training]({p})", ""]
        groups: dict[tuple[str, str], list[dict]] = {}
        for r in runs:
            groups.setdefault((r["config"]["framework"], r["config"]["model"]), []).append(r)
        lines += ["Per node (w_g, w_a, w_b as in the paper; times in seconds: re-training cumulative along the "
                  "graph, FIUn = when the node's owner applied it, after the request was sent):", ""]
        for (fw, model), rs in groups.items():
            lines += [f"#### {fw} / {model}", "", node_table(rs, "C_f", lambda r: _labels(r["config"]["forget"])), ""]
    if ov:
        o0 = ov[0]["overlap"]
        lines += ["### Overlapping forget labels #∩_f (paper Tables 6–7 shape)", "",
                  "Two discovery nodes whose forget labels overlap. Digits has 10 classes, so the paper's 5-label forget "
                  "sets with 0/20/40/60% overlap would leave 0–3 labels to retain; here each discovery node holds "
                  f"{o0['of']} forget labels and they share 0, 1 or 2 of them (#∩_f = 0, 33, 67%). Construction "
                  "(`overlap_topology` in the bench script; files in `results/network_topologies/`): `d1` is a root "
                  "whose own data holds R ∪ F1; `d2` is fine-tuned from `d1` on R ∪ F2; `g` is their FedAvg; `a` and `b` "
                  "fine-tune `g`, then `a`, on R alone. F1 = {1,2,3}; F2 = {4,5,6}, {3,4,5}, {2,3,4}; the request "
                  "forgets C_f = F1 ∪ F2 and R is every other label. `d1` and `d2` are discovery nodes (`d2` also "
                  "inherits from `d1`) and `g`, `a`, `b` inherit from both: the multi-root case, where each of them "
                  "merges the two discovery Fishers (Eq. 5) before dampening.", ""]
        rows = ["| model | #∩_f | F1 / F2 | equals centralized | original AD_r / AD_f | re-training AD_r / AD_f | "
                "FIUn on peers AD_r / AD_f | bar met | FIUn on peers (s) | re-training (s) |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in ov:
            c = cell_summary(r)
            o = r["overlap"]
            rows.append(f"| {c['model']} | {o['percent']}% | {_labels(o['f1'])} / {_labels(o['f2'])} | "
                        f"{'yes' if c['equal'] else '**no**'} ({c['equal_nodes']}/{c['nodes']}) | "
                        f"{_f(c['original_ad_r'])} / {_f(c['original_ad_f'])} | "
                        f"{_f(c['retrain_ad_r'])} / {_f(c['retrain_ad_f'])} | {_f(c['fiun_ad_r'])} / {_f(c['fiun_ad_f'])} | "
                        f"{'yes' if c['ok'] else '**no**'} | {c['network_s']:.2f} | {c['retrain_s']:.2f} |")
        lines += ["\n".join(rows), ""]
        for p in plots:
            if p.endswith("network_overlap.png"):
                lines += [f"![#∩_f on peers]({p})", ""]
        for model in sorted({r["config"]["model"] for r in ov}):
            rs = sorted((r for r in ov if r["config"]["model"] == model), key=lambda r: -r["overlap"]["percent"])
            lines += [f"#### overlap / {model}", "",
                      node_table(rs, "#∩_f", lambda r: f"{r['overlap']['percent']}%",
                                 ids=[n["id"] for n in rs[0]["nodes"]]), ""]
    failing = [r for r in allr if not r.get("quality", {}).get("ok")]
    if failing:
        lines += ["Cells below the quality bar:", ""]
        for r in failing:
            c = cell_summary(r)
            bad = [f"w_{k}: AD_f {_f(v['ad_f'])}%, AD_r ratio {_f(v['ad_r_ratio'], '.3f')}"
                   for k, v in r["quality"]["nodes"].items() if not v["ok"]]
            lines.append(f"- {c['where']} / {c['model']} / C_f = {_labels(c['forget'])}: {'; '.join(bad)}")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="results/network.json from bench/exp_network_frameworks.py")
    ap.add_argument("--out", default="RESULTS.md")
    ap.add_argument("--plots", default="results", help="folder for the PNGs (linked relative to --out)")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    try:
        doc = json.loads(Path(a.json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"network_md: cannot read {a.json}: {exc}", file=sys.stderr)
        return 2
    out = Path(a.out)
    plots = [] if a.no_plots else plot(doc, Path(a.plots))
    rel = []
    for p in plots:
        try:
            rel.append(str(p.resolve().relative_to(out.resolve().parent)))
        except ValueError:
            rel.append(str(p))
    write_section(out, render(doc, rel))
    print(f"wrote {out}" + (f" and {', '.join(map(str, plots))}" if plots else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
