"""How results are written, in one place: paper-style terminal tables (Tables 1-5) for a centralized
or network run (which adds per-node peer times and the bit-for-bit comparison with the centralized
run), the JSON writer, Markdown tables and RESULTS.md sections, and the machine header every
benchmark and experiment records (bench/ and simulations/observe.py use these, never copies)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

#: RESULTS.md: the centralized results (bench/results_md.py) above this line, the sections of the
#: network experiments (``<!-- section:NAME -->`` ... ``<!-- /section:NAME -->``) below it.
RESULTS_MARKER = "<!-- network results below -->"


def _f(v: float | None, width: int = 6) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.2f}"


def json_ready(result: dict) -> dict:
    """The result without in-process objects (keys starting with '_')."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_json(result: dict, path: str | Path, *, indent: int = 2) -> None:
    """``result`` (without its in-process objects) as sorted JSON; the folder is made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(result), indent=indent, sort_keys=True) + "\n")


def fmt(v: float | None, digits: int = 2) -> str:
    """A number for a Markdown table; an en dash for none."""
    return "–" if v is None else f"{v:.{digits}f}"


def md_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(md_rows(header, rows))


def section_markers(name: str) -> tuple[str, str]:
    """The lines that open and close section ``name`` of RESULTS.md."""
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def write_section(path: Path, block: str) -> Path:
    """Put ``block`` (a section: its opening marker line, the text, its closing marker line) into the
    Markdown file at ``path``: in place of the same section, else at the end after RESULTS_MARKER
    (added if missing). Everything else is kept; the file is read right before writing (other
    generators write their own sections of it)."""
    lines = block.strip("\n").split("\n")
    begin, end = lines[0], lines[-1]
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        if RESULTS_MARKER not in text:
            text = text.rstrip("\n") + "\n\n" + RESULTS_MARKER + "\n"
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def machine() -> dict:
    """What the numbers were measured on (the note BENCHMARKS.md prints, see machine_text)."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def machine_load() -> dict:
    """Load averages and free memory at this moment: the CPUs are shared with other work."""
    import psutil

    vm = psutil.virtual_memory()
    return {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "mem_total_gib": round(vm.total / 2**30, 1), "mem_available_gib": round(vm.available / 2**30, 1),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def machine_text(m: dict) -> str:
    """A ``machine()`` record as a header says it."""
    return (f"{m.get('cpus', '?')} CPUs, torch {m.get('torch', '?')} on {m.get('torch_threads', '?')} thread(s), "
            f"Python {m.get('python', '?')}")


def load_text(start: dict, end: dict) -> str:
    """Two ``machine_load()`` records, at the start and the end of a run, as a header says them."""
    return f"Load average at start {start['loadavg_1_5_15']} on {start['cpus']} CPUs, at end {end['loadavg_1_5_15']}"


def format_table(result: dict) -> str:
    cfg = result["config"]
    s = cfg["settings"]
    topo = cfg.get("topology_file") or cfg.get("framework")
    if cfg.get("random_lineage") is not None:
        topo = f"random lineage {cfg['random_lineage']}" + (f" ({cfg['lineage_nodes']} models)"
                                                            if cfg.get("lineage_nodes") else "")
    net = result.get("network")
    fiun_where = " (network)" if net else ""
    net_head = f" | {'peer times (s)':^17} | {'=central':^8}" if net else ""
    net_sub = f"{'':<28} | {'recv':>7} {'applied':>8} |" if net else ""
    lines = [
        f"FIUn on {cfg['dataset']} / {cfg['model']} / {topo}: forget labels {cfg['forget']} "
        f"(seed {cfg['seed']}; estimator={s['estimator']} tau={s['tau']} gamma={s['gamma']} eta={s['eta']} "
        f"T={s.get('temperature', 1.0)} center={s.get('center', False)} normalize={s['normalize']} "
        f"per_label={s['per_label']} rows={s.get('rows', 'all')})",
        "Accuracy in % on each model's training data (AD_r: retained labels, AD_f: forgotten), "
        "test-set AD in brackets; MIA % of forget samples called members (lower is better).",
        "",
        f"{'model':<6} {'role':<9} | {'original':^23} | {'re-training':^23} | {'FIUn' + fiun_where:^23} | "
        f"{'MIA orig/retr/FIUn':^20} | {'cum. time (s) retrain / FIUn':^28}" + net_head,
        f"{'':<6} {'':<9} | {'AD_r':>6} {'AD_f':>6} {'test_r':>9} | {'AD_r':>6} {'AD_f':>6} {'test_r':>9} | "
        f"{'AD_r':>6} {'AD_f':>6} {'test_r':>9} | {'':^20} |" + net_sub,
        "-" * (150 + len(net_head)),
    ]
    for n in result["nodes"]:
        o, r, f = n["original"], n["retrain"], n["fiun"]
        role = "discovery" if n.get("discovery") else "inherited"
        lines.append(
            f"{n['id']:<6} {role:<9} | {_f(o['ad_r'])} {_f(o['ad_f'])} ({_f(o['test_ad_r'])}) | "
            f"{_f(r['ad_r'])} {_f(r['ad_f'])} ({_f(r['test_ad_r'])}) | "
            f"{_f(f['ad_r'])} {_f(f['ad_f'])} ({_f(f['test_ad_r'])}) | "
            f"{_f(o['mia'], 5)} {_f(r['mia'], 5)} {_f(f['mia'], 5)}  | "
            f"{n['retrain_cumulative_seconds']:>10.3f} / {_t(n['fiun_cumulative_seconds'])}"
            + (f"{'':<8} | {_t(n['received_at'], 7)} {_t(n['applied_at'], 8)} | "
               f"{'yes' if n['equals_centralized'] else 'NO':^8}" if net else ""))
    if net:
        lines += ["", f"network: {net['peers']} peers in {net['processes']} processes on loopback, request "
                      f"{net['request_id']} sent to {net['submitted_to']}; peer times are seconds after it was sent",
                  f"equals_centralized: {'true' if result['equals_centralized'] else 'FALSE'} (every new version "
                  f"torch.equal to Algorithm 1 in-process: "
                  f"{sum(n['equals_centralized'] for n in result['nodes'])}/{len(result['nodes'])} nodes)",
                  f"total unlearning time: re-training {result['retrain_seconds']:.3f} s (sequential), "
                  f"FIUn on the network {result['fiun_seconds']:.3f} s from request to last receipt "
                  f"(in-process {result['centralized_fiun_seconds']:.4f} s)  ->  network FIUn is "
                  f"{result['speedup']:.0f}x faster"]
    else:
        lines += ["", f"total unlearning time: re-training {result['retrain_seconds']:.3f} s, "
                      f"FIUn {result['fiun_seconds']:.4f} s  ->  FIUn is {result['speedup']:.0f}x faster"]
    if "baselines" in result:
        lines += ["", f"{'method':<16} {'mean Δacc':>10} {'time (s)':>10} {'FIUn speed-up':>14}"]
        fiun_delta = _mean_delta(result["nodes"], "fiun")
        retr_delta = _mean_delta(result["nodes"], "retrain")
        lines.append(f"{'FIUn':<16} {fiun_delta:>10.3f} {result['fiun_seconds']:>10.4f} {'1x':>14}")
        x = result["speedup"]
        lines.append(f"{'re-training':<16} {retr_delta:>10.3f} {result['retrain_seconds']:>10.3f} "
                     f"{x:>13.{0 if x >= 10 else 1}f}x")
        for name, b in result["baselines"].items():
            d = "n/a" if b["delta_acc"] is None else f"{b['delta_acc']:.3f}"
            x = b["fiun_speedup"]
            lines.append(f"{name:<16} {d:>10} {b['seconds']:>10.3f} {x:>13.{0 if x >= 10 else 1}f}x")
    return "\n".join(lines)


def _t(v: float | None, width: int = 0) -> str:
    return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.4f}"


def _mean_delta(nodes: list[dict], key: str) -> float:
    ds = [(n[key]["ad_r"] - (n[key]["ad_f"] or 0.0)) / 100.0 for n in nodes if n[key]["ad_r"] is not None]
    return sum(ds) / len(ds) if ds else float("nan")


def quality(result: dict, *, single_label: bool | None = None) -> dict:
    """The issue's quality bar per node: single label AD_f <= 1% and AD_r >= 95% of original;
    multi-label AD_f <= 2% and AD_r >= 85% of original."""
    if single_label is None:
        single_label = len(result["config"]["forget"]) == 1
    max_f, min_ratio = (1.0, 0.95) if single_label else (2.0, 0.85)
    per_node = {}
    for n in result["nodes"]:
        o, f = n["original"], n["fiun"]
        ratio = f["ad_r"] / o["ad_r"] if o["ad_r"] else None
        ok = (f["ad_f"] is None or f["ad_f"] <= max_f) and (ratio is None or ratio >= min_ratio)
        per_node[n["id"]] = {"ad_f": f["ad_f"], "ad_r_ratio": ratio, "ok": ok}
    return {"ok": all(v["ok"] for v in per_node.values()), "max_ad_f": max_f, "min_ad_r_ratio": min_ratio,
            "nodes": per_node}
