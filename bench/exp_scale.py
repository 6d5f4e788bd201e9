"""Experiment 3, Scale: N real peers (FL with N - 1 clients and the global model g, one peer each).

    .venv/bin/python bench/exp_scale.py --seed 0 --out results/scale.json

For each N: train ``fl_n(N - 1)`` in-process, start N ``fiun-peer`` processes, publish every model
through its owner's admin API and measure, from the peers' own ``record_stored`` log events, how long
each lineage record took to reach every peer (median and p99 over the N records). Then submit
requests at c1 (every client is a discovery node: each announces a Fisher, g pulls and merges all
of them) and take the time from the request to all receipts, both at the requester and at every
peer. A sampler reads each peer process's RSS and USS (psutil) every few seconds throughout; the
peak per process is reported (max and median over peers). Before each N the free memory is
checked against the USS measured so far; a size that would not fit is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import psutil

from bench import int_list
from simulations import observe as nx
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.report import fmt, json_ready, load_text, machine_load
from simulations.topology import fl_n

FORGETS = [(2,), (5,), (9,)]
DEFAULT_USS_MIB = 400.0        # per-peer guess before any size was measured
MEMORY_MARGIN_GIB = 4.0        # left for the other work on this machine


def fits(n: int, uss_mib: float) -> tuple[bool, str]:
    need = n * uss_mib * 1.25 / 1024
    avail = psutil.virtual_memory().available / 2**30
    return need <= avail - MEMORY_MARGIN_GIB, f"need ~{need:.1f} GiB for {n} peers, {avail:.1f} GiB available"


def measure(n: int, *, reps: int, seed: int, workdir: Path, startup_timeout: float, request_timeout: float,
            connect: str = "star", log=print) -> dict:
    nodes = fl_n(n - 1)
    topo = nx.write_topology(nodes, workdir / f"topology-fl-{n}.json")
    stage = prepare(SimConfig(framework=None, topology_file=str(topo), model="mlp", forget=FORGETS[0],
                              seed=seed, baselines=False))
    names = [s.id for s in stage.nodes]
    t_start = time.time()
    with nx.make_cluster(workdir / f"peers-{n}", names, startup_timeout=startup_timeout, connect=connect,
                         seed=seed) as cluster:
        startup_s = time.time() - t_start
        log(f"  N={n}: {len(names)} peers up in {startup_s:.0f}s")
        owners = dict(zip(names, cluster.peers, strict=True))
        # A cluster just started is still greeting and syncing (all N at once); lineage times
        # should measure how a record travels, not that backlog.
        settle_before_publish = nx.wait_quiet([p.proc.pid for p in cluster.peers], timeout=startup_timeout)
        log(f"  N={n}: quiet after {settle_before_publish['waited_s']:.0f}s")
        with nx.MemorySampler([p.proc.pid for p in cluster.peers], interval=3.0) as mem:
            t_pub = time.time()
            publish_stage(stage, owners, timeout=startup_timeout)
            for p in cluster.peers:
                nx.wait_lineage(p, len(names), timeout=startup_timeout)
            publish_s = time.time() - t_pub
            time.sleep(0.5)            # the last store events are in the logs
            before = time.time()
            lineage = nx.publish_times(cluster.peers, before=before)
            load = machine_load()
            runs = []
            for r, forget in enumerate(FORGETS[:reps]):
                run = nx.run_request(owners["c1"], owners, cluster.peers, forget, f"scale-{n}-{r}",
                                     timeout=request_timeout)
                runs.append(run)
                log(f"  N={n} rep {r}: all receipts at requester {run['last_receipt_at_requester']:.2f}s, "
                    f"everywhere {run['all_receipts_everywhere']:.2f}s")
        ends = [r["t_submit"] for r in runs[1:]] + [time.time()]
        for run, end in zip(runs, ends, strict=True):   # how the receipts reached the requester
            run["receipts_at_requester"] = nx.receipt_arrivals(owners["c1"], run, end)
            run["request_paths"] = nx.request_paths(owners, run, end)
        connected = [nx.patient(p).status().connected_peers for p in cluster.peers]
    return {
        "n_peers": n, "clients": n - 1, "startup_s": startup_s, "settle_before_publish": settle_before_publish,
        "publish_s": publish_s, "load_during_requests": load,
        "connected_peers": {"min": min(connected), "median": nx.median(connected), "max": max(connected)},
        "lineage_propagation": lineage,
        "request_to_all_receipts_at_requester_s": nx.median([r["last_receipt_at_requester"] for r in runs]),
        "request_to_all_receipts_everywhere_s": nx.median([r["all_receipts_everywhere"] for r in runs]),
        "request_to_last_apply_s": nx.median([r["last_applied"] for r in runs]),
        "peer_cpu_floor_s": nx.median([r["request_cpu_s"] / r["cores"] for r in runs]),
        "receipt_sources_at_requester": {k: sum(r["receipts_at_requester"]["by_source"].get(k, 0) for r in runs)
                                         for k in ("local", "gossip", "sync", "push")},
        "all_applied": all(set(r["states"].values()) == {"applied"} and len(r["states"]) == n for r in runs),
        "memory": mem.summary(), "runs": runs,
    }


def run_scale(*, sizes=(8, 16, 32, 64), reps: int = 3, seed: int = 0, workdir: Path | None = None,
              startup_timeout: float = 900.0, request_timeout: float = 600.0, connect: str = "star",
              log=print, on_cell=None) -> dict:
    """Every size; ``on_cell(partial_result)`` after each one (to save progress)."""
    t0 = time.time()
    load_start = machine_load()
    cells, skipped = [], []
    uss = DEFAULT_USS_MIB
    with nx.scratch(workdir, "fiun-scale-") as workdir:
        for n in sizes:
            ok, why = fits(n, uss)
            if not ok:
                log(f"N={n}: skipped, {why}")
                skipped.append({"n_peers": n, "reason": why})
                continue
            log(f"N={n}: training, starting peers ({why})")
            cell = measure(n, reps=reps, seed=seed, workdir=workdir, startup_timeout=startup_timeout,
                           request_timeout=request_timeout, connect=connect, log=log)
            cells.append(cell)
            if on_cell:
                on_cell({"experiment": "scale", "partial": True, "seed": seed, "cells": cells, "skipped": skipped})
            uss = cell["memory"]["peak_uss_mib"]["max"] or uss
    return {"experiment": "scale", "seed": seed, "model": "mlp", "dataset": "digits", "reps": reps,
            "topology": "fl_n(N-1): N-1 clients -> g (FedAvg), one peer per model", "peers_per_process": 1, "connect": connect,
            "sync_interval_s": 2.0, "load_at_start": load_start, "load_at_end": machine_load(),
            "wall_s": time.time() - t0, "cells": cells, "skipped": skipped}


def complete(result: dict) -> dict:
    """Fill what a partial result (saved after each size) lacks, from its cells."""
    cells = result["cells"]
    r = dict(result)
    r.setdefault("reps", len(cells[0]["runs"]))
    r.setdefault("load_at_start", cells[0]["load_during_requests"])
    r.setdefault("load_at_end", cells[-1]["load_during_requests"])
    r.setdefault("wall_s", None)
    r.setdefault("skipped", [])
    return r


def plot(result: dict, path: Path, command: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = sorted(result["cells"], key=lambda c: c["n_peers"])
    n = [c["n_peers"] for c in cs]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(n, [c["lineage_propagation"]["reach_all_s"]["median"] for c in cs], "o-", label="lineage record reaches all peers, median")
    a1.plot(n, [c["lineage_propagation"]["reach_all_s"]["p99"] for c in cs], "o--", label="… p99")
    a1.plot(n, [c["request_to_all_receipts_at_requester_s"] for c in cs], "s-", label="request → all receipts at requester")
    a1.plot(n, [c["request_to_all_receipts_everywhere_s"] for c in cs], "s--", label="request → all receipts at every peer")
    a1.set_xscale("log", base=2)
    a1.set_xlabel("peers N")
    a1.set_ylabel("seconds")
    a1.legend(fontsize=7)
    a1.set_title("propagation")
    a2.plot(n, [c["memory"]["peak_rss_mib"]["max"] for c in cs], "o-", label="peak RSS, max over peers")
    a2.plot(n, [c["memory"]["peak_rss_mib"]["median"] for c in cs], "o--", label="peak RSS, median")
    a2.plot(n, [c["memory"]["peak_uss_mib"]["max"] for c in cs], "s-", label="peak USS, max over peers")
    a2.plot(n, [c["memory"]["peak_uss_mib"]["median"] for c in cs], "s--", label="peak USS, median")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("peers N")
    a2.set_ylabel("MiB per peer process")
    a2.set_ylim(bottom=0)
    a2.legend(fontsize=7)
    a2.set_title("memory per peer")
    fig.suptitle("Scale: FL with N-1 clients, MLP on digits, real peers")
    fig.text(0.01, 0.01, command, fontsize=6, color="gray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def section(result: dict, command: str, png: str) -> str:
    f = fmt
    lines = ["## Scale on real peers (experiment 3)", "",
             f"Command: `.venv/bin/python {command}` (seed {result['seed']}, MLP on digits, median of "
             f"{result['reps']} requests per size). {load_text(result['load_at_start'], result['load_at_end'])}; "
             + (f"total {result['wall_s'] / 60:.1f} min." if result.get("wall_s") else "run time not recorded.")
             + (" **Partial run**: only the sizes in the table finished before the run was stopped."
                if result.get("partial") else ""), "",
             "Topology `fl_n(N-1)`: N-1 FL clients (every label) and their FedAvg g, one real `fiun-peer` "
             "process per model (no peers share a process). A lineage record's reach time is from its "
             "publisher storing it (just before it pushes it to every peer it knows) to the last peer storing it, from the peers' "
             "own `record_stored` log events; median and p99 over the N records. Request → all receipts is "
             "from submitting the request at c1 to the last receipt stored, at c1 and at every peer. Every "
             "client is a discovery node, so each request makes N-1 Fisher announcements and g merges all "
             "of them. Memory: peak per process over the run, sampled every 3 s; USS counts only the pages "
             "private to a process (RSS also counts the shared torch libraries in every peer).", "",
             "| N | lineage reach, median (s) | p99 (s) | lineage via push / gossip / sync | request → all receipts "
             "at requester (s) | … at every peer (s) | peers' CPU / cores (s) | receipts at c1 via push / gossip / "
             "sync | libp2p conns min–max | peak RSS max / median (MiB) | peak USS max / median (MiB) | USS sum "
             "(GiB) | startup (s) | applied |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        lp, m = c["lineage_propagation"], c["memory"]
        src = " / ".join(str(lp["sources"].get(k, 0)) for k in ("push", "gossip", "sync"))
        rsrc = " / ".join(str(c["receipt_sources_at_requester"].get(k, 0)) for k in ("push", "gossip", "sync"))
        lines.append(f"| {c['n_peers']} | {f(lp['reach_all_s']['median'])} | {f(lp['reach_all_s']['p99'])} | {src} | "
                     f"{f(c['request_to_all_receipts_at_requester_s'])} | {f(c['request_to_all_receipts_everywhere_s'])} | "
                     f"{f(c.get('peer_cpu_floor_s'))} | {rsrc} | "
                     f"{c['connected_peers']['min']}–{c['connected_peers']['max']} | "
                     f"{f(m['peak_rss_mib']['max'], 0)} / {f(m['peak_rss_mib']['median'], 0)} | "
                     f"{f(m['peak_uss_mib']['max'], 0)} / {f(m['peak_uss_mib']['median'], 0)} | "
                     f"{f(m['peak_uss_mib']['sum'] / 1024 if m['peak_uss_mib']['sum'] else None, 1)} | "
                     f"{c['startup_s']:.0f} | {'all' if c['all_applied'] else 'NO'} |")
    for s in result["skipped"]:
        lines.append(f"| {s['n_peers']} | skipped: {s['reason']} | | | | | | | | | | | | |")
    for s in result.get("not_finished", []):
        lines.append(f"| {s['n_peers']} | not finished: {s['reason']} | | | | | | | | | | | | |")
    lines += ["", f"![Scale]({png})", "", f"Figure: `{command}`, seed {result['seed']}."]
    return "\n".join(lines)


def write_outputs(result: dict, out: Path, command: str, *, results_md: bool) -> None:
    """The JSON, its PNG next to it and (optionally) the RESULTS.md section, all naming ``command``."""
    png = out.with_suffix(".png")
    result["command"], result["png"] = command, str(png)
    out.write_text(json.dumps(json_ready(result), indent=1) + "\n")
    plot(result, png, command)
    if results_md:
        nx.write_section("scale", section(result, command, str(png)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/scale.json")
    ap.add_argument("--sizes", default="8,16,32,64", type=int_list)
    ap.add_argument("--reps", type=int, default=3, choices=[1, 2, 3])
    ap.add_argument("--connect", default="star", choices=["star", "random"],
                    help="libp2p bootstrap: star (all to the first peer) or random (first + 3 random others)")
    ap.add_argument("--no-results-md", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--from-partial", metavar="JSON",
                    help="turn the progress file a stopped run left (OUT.partial.json) into OUT, its PNG and "
                         "the section, marked partial; --seed/--out must match the stopped run's")
    ap.add_argument("--not-finished", action="append", default=[], metavar="N:WHY",
                    help="with --from-partial: a size the stopped run did not finish, and why (repeatable)")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(raw)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_partial:
        result = complete(json.loads(Path(args.from_partial).read_text()))
        result["not_finished"] = [{"n_peers": int(x.split(":", 1)[0]), "reason": x.split(":", 1)[1].strip()}
                                  for x in args.not_finished]
        drop = {args.from_partial, *args.not_finished}
        stopped = [a for a in raw if a not in drop and a not in ("--from-partial", "--not-finished")]
        command = " ".join(["bench/exp_scale.py", *stopped])
        write_outputs(result, out, command, results_md=not args.no_results_md)
        print(f"wrote {out}, {result['png']}")
        return 0
    partial = out.with_suffix(".partial.json")
    result = run_scale(sizes=args.sizes, reps=args.reps, seed=args.seed,
                       connect=args.connect,
                       on_cell=lambda r: partial.write_text(json.dumps(json_ready(r), indent=1)))
    partial.unlink(missing_ok=True)
    command = " ".join(["bench/exp_scale.py", *raw])
    write_outputs(result, out, command, results_md=not args.no_results_md)
    for c in result["cells"]:
        lp = c["lineage_propagation"]["reach_all_s"]
        print(f"N={c['n_peers']}: lineage reach median {lp['median']:.2f}s p99 {lp['p99']:.2f}s, request -> all "
              f"receipts {c['request_to_all_receipts_everywhere_s']:.2f}s, peak USS max "
              f"{c['memory']['peak_uss_mib']['max']:.0f} MiB")
    for s in result["skipped"]:
        print(f"N={s['n_peers']}: skipped ({s['reason']})")
    print(f"wrote {out}, {result['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
