"""Experiment 4, the paper's Fig. 9 question (§6.4): FIUn with the Fisher on the last layer only, or on
the last k layers (k = 1 .. every layer with parameters), on digits.

    .venv/bin/python bench/exp_last_k_layers.py --seed 0 --out results/last_k_layers.json

For every graph (framework × model) the stage is trained once (``simulations.centralized.prepare``);
then for each label set and each k, Algorithm 1 runs over the unlearning sub-graph exactly as
``run_fiun`` does (model Fishers first, as at publish time; unlearning Fishers on the discovery
nodes; merge with Eq. 5 and dampen with Eq. 6 on each node), except that the Fishers and the
dampening cover the last k layers' parameters (``simulations.last_k.last_k_fisher``, the torch.func
path, for every k including k = 1). The project's own closed-form k = 1 (``fiun_peer.unlearn``, the
functions ``run_fiun`` and every peer call) runs in the same loop as the reference: the two k = 1 rows
agree up to float32 rounding. Times are this thread's CPU seconds (torch on one thread), median of
``--repeats`` runs of the unlearning step: on a shared machine wall time mostly measures the others.

One setting for every k, stated in the JSON and in RESULTS.md: ``FIUnSettings()`` with the whole
head selectable (rows = "all"; empirical estimator, T = 4, per-label Fishers, γ = 3, η = 0, τ = 1,
centring); ``--settings paper``
adds the paper-exact ``FIUnSettings.paper()``. Centring (a softmax gauge) only exists for the head,
so it is applied to the head's tensors alone; the other layers are dampened as they are.
Writes the JSON, a PNG plot next to it, and (``--results-md``) the RESULTS.md section.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from bench.bench_timing import write_json
from fiun_peer.core.fisher import Fisher, find_head
from fiun_peer.core.fiun import FIUnSettings, center_head, fiun_update, label_mask, merge_fishers
from fiun_peer.models import build_model
from fiun_peer.unlearn import apply_fiun, node_model_fisher, node_unlearning_fisher
from simulations.centralized import SimConfig, Stage, evaluate, prepare
from simulations.last_k import last_k_fisher, last_k_parameter_names, parameter_layers
from simulations.report import RESULTS_MARKER, fmt, machine, quality, section_markers, write_section
from simulations.training import own_data

COMMAND = ".venv/bin/python bench/exp_last_k_layers.py --seed {seed} --out results/last_k_layers.json"
FORGETS = ((2,), (1, 4, 6, 8))
# Experiment 4 asks which layers Eq. 6 may touch, so it keeps the whole-head selection (rows="all")
# of the settings it was run with (the defaults before issue 13, which limited a class request to
# the forgotten classes' rows: rows only exist in the head).
SETTINGS = {"default": replace(FIUnSettings(), rows="all", gamma=3.0), "paper": FIUnSettings.paper()}


# ---------------------------------------------------------------- Algorithm 1 over the last k layers

def model_fisher_k(model: nn.Module, x: Tensor, y: Tensor, k: int, s: FIUnSettings) -> Fisher:
    """Eq. 4 over the last k layers, on the node's own data."""
    return last_k_fisher(model, x, y, k, estimator=s.estimator, temperature=s.temperature, batch_size=s.batch_size)


def unlearning_fisher_k(model: nn.Module, x: Tensor, y: Tensor, forget: tuple[int, ...], k: int,
                        s: FIUnSettings) -> Fisher:
    """Eq. 3 over the last k layers on the forget data; per label and merged (Eq. 5) when per_label."""
    groups = [[c] for c in forget] if s.per_label else [list(forget)]
    parts = []
    for group in groups:
        m = label_mask(y, group)
        if m.any():
            parts.append(model_fisher_k(model, x[m], y[m], k, s))
    return merge_fishers(parts)


def apply_k(model: nn.Module, own: Fisher, discovery: list[Fisher], k: int, s: FIUnSettings) -> dict[str, Tensor]:
    """Eqs. 5-6 on the last k layers; returns the new full state dict. Centring applies to the head only."""
    names = last_k_parameter_names(model, k)
    params = dict(model.named_parameters())
    chosen = {n: params[n].detach().clone() for n in names}
    if s.center:
        head, _ = find_head(model)
        head_keys = [n for n in names if n.startswith(f"{head}.")]
        chosen.update(center_head({n: chosen[n] for n in head_keys}))
    new = fiun_update(chosen, own, discovery, replace(s, center=False))
    state = {n: v.detach().clone() for n, v in model.state_dict().items()}
    state.update(new)
    return state


def run_fiun_k(stage: Stage, forget: tuple[int, ...], k: int | None, s: FIUnSettings, *, repeats: int = 1) -> dict:
    """``run_fiun`` with last-k Fishers (``k=None``: the project's closed-form path, ``fiun_peer.unlearn``,
    whose states equal ``run_fiun``'s). Same order, data and timing rules, but timed on this thread's CPU
    clock (torch runs on it alone), so other processes' load is left out; the unlearning part (Eq. 3
    Fishers and the updates) is repeated ``repeats`` times and its median time kept."""
    g, ds = stage.umig, stage.ds
    sub = g.unlearning_subgraph(forget)
    if k is None:
        mf = lambda m, x, y: node_model_fisher(m, x, y, s)  # noqa: E731
        uf = lambda m, x, y: node_unlearning_fisher(m, x, y, forget, s)  # noqa: E731
        up = lambda m, own, disc: apply_fiun(m, own, disc, s)  # noqa: E731
    else:
        mf = lambda m, x, y: model_fisher_k(m, x, y, k, s)  # noqa: E731
        uf = lambda m, x, y: unlearning_fisher_k(m, x, y, forget, k, s)  # noqa: E731
        up = lambda m, own, disc: apply_k(m, own, disc, k, s)  # noqa: E731
    t0 = time.thread_time()
    model_fishers = {n: mf(stage.models[n], *own_data(ds, stage.data_idx[n])) for n in sub}
    model_fisher_s = time.thread_time() - t0
    runs = []
    for _ in range(repeats):
        fhat, fhat_s, upd_s, states = {}, 0.0, 0.0, {}
        for d in g.discovery_nodes(forget):
            t0 = time.thread_time()
            fhat[d] = uf(stage.models[d], *own_data(ds, stage.data_idx[d]))
            fhat_s += time.thread_time() - t0
        for n in sub:
            t0 = time.thread_time()
            states[n] = up(stage.models[n], model_fishers[n], [fhat[d] for d in g.discovery_ancestors(n, forget)])
            upd_s += time.thread_time() - t0
        runs.append((fhat_s + upd_s, fhat_s, states))
    runs.sort(key=lambda r: r[0])
    seconds, fhat_s, states = runs[len(runs) // 2]
    models = {}
    for n, st in states.items():
        m = build_model(stage.train_cfg.model, ds.input_shape, ds.num_classes, seed=0)
        m.load_state_dict(st)
        models[n] = m.eval()
    return {"subgraph": sub, "models": models, "seconds": seconds, "unlearning_fisher_seconds": fhat_s,
            "model_fisher_seconds": model_fisher_s,
            "parameters": sum(v.numel() for v in model_fishers[sub[0]].values())}


# ---------------------------------------------------------------- one row of the table

def summarize(stage: Stage, forget: tuple[int, ...], models: dict[str, nn.Module]) -> dict:
    nodes = [{"id": n, "original": evaluate(stage, stage.models[n], n, forget),
              "fiun": evaluate(stage, models[n], n, forget)} for n in models]
    q = quality({"config": {"forget": list(forget)}, "nodes": nodes})
    ratios = [v["ad_r_ratio"] for v in q["nodes"].values() if v["ad_r_ratio"] is not None]

    def mean(key: str, which: str = "fiun") -> float | None:
        vs = [nd[which][key] for nd in nodes if nd[which][key] is not None]
        return sum(vs) / len(vs) if vs else None

    return {"ad_f": mean("ad_f"), "ad_r": mean("ad_r"), "test_ad_f": mean("test_ad_f"),
            "test_ad_r": mean("test_ad_r"), "orig_ad_r": mean("ad_r", "original"),
            "orig_ad_f": mean("ad_f", "original"),
            "ad_r_pct_of_orig": 100.0 * mean("ad_r") / mean("ad_r", "original"),
            "worst_ad_f": max(nd["fiun"]["ad_f"] or 0.0 for nd in nodes), "min_ratio": min(ratios, default=None),
            "bar_met": q["ok"], "nodes": nodes}


def run_graph(framework: str, model: str, *, seed: int, settings_names: list[str],
              forgets: tuple[tuple[int, ...], ...] = FORGETS, max_k: int | None = None, repeats: int = 3,
              progress=print) -> dict:
    stage = prepare(SimConfig(framework=framework, model=model, seed=seed))
    layers = parameter_layers(next(iter(stage.models.values())))
    ks = list(range(1, min(len(layers), max_k or len(layers)) + 1))
    rows = []
    for sname in settings_names:
        s = SETTINGS[sname]
        for forget in forgets:
            for k in [None, *ks]:
                r = run_fiun_k(stage, forget, k, s, repeats=repeats)
                rows.append({"settings": sname, "forget": list(forget), "k": k or 1,
                             "path": "closed_form" if k is None else "torch_func",
                             "layers": layers[-(k or 1):], "seconds": r["seconds"], "parameters": r["parameters"],
                             "unlearning_fisher_seconds": r["unlearning_fisher_seconds"],
                             "model_fisher_seconds": r["model_fisher_seconds"],
                             **summarize(stage, forget, r["models"])})
                last = rows[-1]
                progress(f"{framework}/{model} {sname} forget={forget} k={k or 1} {last['path']}: "
                         f"AD_f {last['ad_f']:.2f} AD_r {last['ad_r']:.2f} ({last['ad_r_pct_of_orig']:.1f}% of orig) "
                         f"t={last['seconds']:.4f}s bar={'met' if last['bar_met'] else 'not met'}")
    return {"framework": framework, "model": model, "layers": layers, "ks": ks, "rows": rows}


# ---------------------------------------------------------------- plot and RESULTS.md

def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(g, sname, f) for g in result["graphs"] for sname in result["settings_names"]
              for f in sorted({tuple(r["forget"]) for r in g["rows"]}, key=len)]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.3 * rows), squeeze=False)
    for ax, (g, sname, forget) in zip(axes.flat, panels, strict=False):
        rs = [r for r in g["rows"] if r["settings"] == sname and tuple(r["forget"]) == forget
              and r["path"] == "torch_func"]
        ks = [r["k"] for r in rs]
        ax.plot(ks, [r["ad_r"] for r in rs], "o-", label="AD_r (retained)")
        ax.plot(ks, [r["ad_f"] for r in rs], "s-", label="AD_f (forgotten)")
        ax.set_ylim(-5, 105)
        ax.set_xticks(ks)
        ax.set_xlabel("k (last layers in the Fisher)")
        ax.set_ylabel("accuracy %")
        ax2 = ax.twinx()
        ax2.plot(ks, [r["seconds"] for r in rs], "^--", color="gray", label="unlearning time")
        ax2.set_yscale("log")
        ax2.set_ylabel("seconds (log)")
        ax.set_title(f"{g['framework']}/{g['model']} C_f={{{','.join(map(str, forget))}}} ({sname})", fontsize=9)
        if ax is axes.flat[0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"FIUn with the Fisher on the last k layers (digits, seed {result['seed']})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # room for the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)


MARKER = RESULTS_MARKER
BEGIN, END = section_markers("last-k-layers")


def render_section(result: dict, png: str) -> str:
    f = fmt
    lines = [BEGIN, "## Experiment 4: Fisher on the last layer vs the last k layers (the paper's Fig. 9)", "",
             "Generated by `bench/exp_last_k_layers.py` from its JSON; command (seed "
             f"{result['seed']}, CPU, torch on one thread):", "", "```", result["command"], "```", "",
             "Algorithm 1 on the unlearning sub-graph with the Fishers (Eqs. 3–4) and the dampening (Eq. 6) over "
             "the parameters of the last k layers (k = 1 is FIUn's own choice; the largest k is every layer). "
             "All k use the same settings: " + ", ".join(
                 f"`{n}` = {SETTINGS[n].to_dict()}" for n in result["settings_names"]) + ". "
             "Centring applies to the head only (it is a softmax gauge). Rows `torch_func` compute every k with "
             "`simulations.last_k.last_k_fisher`; the `closed form` row is the project's own k = 1 "
             "(`fiun_peer.unlearn`, what `run_fiun` and every peer run), for reference. AD_r / AD_f: mean "
             "accuracy (%) over the sub-graph's nodes on their training data (retained / forgotten labels). "
             "Time: CPU seconds of the benchmarking thread (torch on one thread; wall time on this shared "
             f"machine mostly measures other work), median of {result.get('repeats', 1)} runs, for the "
             "unlearning Fishers + updates of the whole sub-graph, model Fishers excluded (paper §4.4.2); "
             "model-Fisher time (computed once, at publish time) is its own column. Bar: "
             "single label AD_f ≤ 1% and AD_r ≥ 95% of the original on every node; multi-label ≤ 2% and ≥ 85%.",
             ""]
    for g in result["graphs"]:
        lines += [f"### {g['framework']} / {g['model']} (layers with parameters: "
                  f"{', '.join('`' + x + '`' for x in g['layers'])})", "",
                  "| settings | C_f | k | path | params | AD_f | AD_r | AD_r % of orig. | worst AD_f | time (s) | "
                  "model-Fisher time (s) | bar met |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            lines.append(f"| {r['settings']} | {{{','.join(map(str, r['forget']))}}} | {r['k']} | "
                         f"{'closed form' if r['path'] == 'closed_form' else 'torch_func'} | {r['parameters']:,} | "
                         f"{f(r['ad_f'])} | {f(r['ad_r'])} | {f(r['ad_r_pct_of_orig'], 1)} | {f(r['worst_ad_f'])} | "
                         f"{f(r['seconds'], 3)} | {f(r.get('model_fisher_seconds'), 3)} | "
                         f"{'yes' if r['bar_met'] else 'no'} |")
        lines.append("")
    lines += [f"![AD_r, AD_f and time against k]({png})", "", "**Reading** (computed from the rows above):", "",
              findings(result), "",
              "The direction matches the paper's Fig. 9 (§6.4): the more layers the Fisher and the dampening "
              "cover, the lower AD_r and the longer the Fisher takes. " + everywhere(result), END]
    return "\n".join(lines)


def findings(result: dict) -> str:
    """A bullet per graph and setting, computed from the rows (no hand-written numbers)."""
    out = []
    for g in result["graphs"]:
        for sname in result["settings_names"]:
            rs = [r for r in g["rows"] if r["settings"] == sname and r["path"] == "torch_func"]
            closed = [r for r in g["rows"] if r["settings"] == sname and r["path"] == "closed_form"]
            k1 = [r for r in rs if r["k"] == 1]
            kmax = [r for r in rs if r["k"] == max(g["ks"])]
            met1 = sum(r["bar_met"] for r in k1)
            metk = sum(r["bar_met"] for r in kmax)
            t_ratio = [b["seconds"] / max(a["seconds"], 1e-12) for a, b in zip(k1, kmax, strict=True)]
            t_closed = [b["seconds"] / max(a["seconds"], 1e-12) for a, b in zip(closed, kmax, strict=True)]
            ar1 = sum(r["ad_r"] for r in k1) / len(k1)
            ark = sum(r["ad_r"] for r in kmax) / len(kmax)
            every = " (all layers)" if max(g["ks"]) == len(g["layers"]) else ""
            out.append(f"- {g['framework']}/{g['model']} ({sname}): k = 1 meets the bar on {met1} of {len(k1)} "
                       f"label sets, k = {max(g['ks'])}{every} on {metk} of {len(kmax)}; mean AD_r goes "
                       f"{ar1:.2f} → {ark:.2f}; the unlearning time grows {min(t_ratio):.1f}–{max(t_ratio):.1f}× "
                       f"from k = 1 to k = {max(g['ks'])} on the same torch.func path, "
                       f"{min(t_closed):.1f}–{max(t_closed):.1f}× against the closed-form k = 1.")
    return "\n".join(out)


def everywhere(result: dict) -> str:
    """Which k meet the bar on every graph and label set, per setting (computed, not written by hand)."""
    parts = []
    for sname in result["settings_names"]:
        ks = sorted({r["k"] for g in result["graphs"] for r in g["rows"] if r["path"] == "torch_func"})
        good = [k for k in ks if all(r["bar_met"] for g in result["graphs"] for r in g["rows"]
                                     if r["settings"] == sname and r["path"] == "torch_func" and r["k"] == k)]
        parts.append(f"under `{sname}`, " + (f"k = {', '.join(map(str, good))}" if good else "no k"))
        parts[-1] += " met the bar on every graph and label set"
    return "In this run, " + "; ".join(parts) + "."


def write_results_md(section: str, path: Path) -> None:
    write_section(path, section)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graphs", default="fl:mlp,il:mlp,fl:cnn", help="framework:model pairs")
    ap.add_argument("--settings", default="default", choices=["default", "paper", "both"])
    ap.add_argument("--repeats", type=int, default=3, help="runs of the unlearning step per row (median time)")
    ap.add_argument("--quick", action="store_true", help="fl:mlp, forget {2}, k ≤ 2, 1 repeat")
    ap.add_argument("--out", default="results/last_k_layers.json")
    ap.add_argument("--results-md", metavar="PATH", help="also write the RESULTS.md section into PATH")
    ap.add_argument("--render-only", action="store_true", help="re-render plot and section from --out")
    a = ap.parse_args(argv)
    out = Path(a.out)
    png = out.with_suffix(".png")
    if a.render_only:
        import json

        result = json.loads(out.read_text())
    else:
        torch.manual_seed(a.seed)
        names = ["default", "paper"] if a.settings == "both" else [a.settings]
        graphs = ["fl:mlp"] if a.quick else a.graphs.split(",")
        kw = {"forgets": ((2,),), "max_k": 2, "repeats": 1} if a.quick else {"repeats": a.repeats}
        cmd = COMMAND.format(seed=a.seed) + ("" if a.settings == "default" else f" --settings {a.settings}") + \
            ("" if a.graphs == "fl:mlp,il:mlp,fl:cnn" or a.quick else f" --graphs {a.graphs}") + \
            ("" if a.repeats == 3 or a.quick else f" --repeats {a.repeats}") + (" --quick" if a.quick else "")
        result = {"experiment": "last_k_layers", "seed": a.seed, "command": cmd, "quick": a.quick,
                  "settings_names": names, "repeats": kw["repeats"], "settings": {n: SETTINGS[n].to_dict() for n in names},
                  "machine": machine(), "graphs": []}
        for g in graphs:
            fw, model = g.split(":")
            result["graphs"].append(run_graph(fw, model, seed=a.seed, settings_names=names,
                                              progress=lambda m: print(m, file=sys.stderr, flush=True), **kw))
        write_json(result, out)
        print(f"wrote {out}", file=sys.stderr)
    plot(result, png)
    print(f"wrote {png}", file=sys.stderr)
    if a.results_md:
        write_results_md(render_section(result, png.as_posix()), Path(a.results_md))
        print(f"wrote section into {a.results_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
