"""Benchmark: FIUn against each baseline (re-training, fine-tune, gradient ascent, distill) on the
same graph, as speed-up = baseline seconds / FIUn seconds for the whole unlearning sub-graph.

    .venv/bin/python bench/bench_baselines.py --seed 0 --json results/bench_baselines.json

Reuses the simulation as it is: ``simulations.centralized.prepare`` trains the stage once per
(framework, model), then every round calls ``run_on_stage`` (Algorithm 1, re-training and the three
baselines, each timed by the simulation itself, FIUn without the model Fishers, as the paper's
§4.4.2) on that same stage. FIUn takes milliseconds against seconds for the others, so each round
also re-runs ``run_fiun`` a few times right after and takes the median FIUn time of the round.
Speed-ups are medians over rounds of per-round ratios. The paper claims ~99% time saved, i.e. ≥ 100×.
The simulation's timers (``time.perf_counter``) are pointed at this thread's CPU clock for the run
(``--clock wall`` keeps wall time): torch runs on one thread, so that is the work each method does,
without the time other processes on this shared machine held the core.
Settings: ``FIUnSettings()`` (the project default), one label set (``--forget``, default 2).
"""

from __future__ import annotations

import argparse
import sys

from bench import int_list
from bench.bench_timing import median, simulation_clock, write_cases
from fiun_peer.core.fiun import FIUnSettings
from simulations.baselines import BASELINES
from simulations.centralized import SimConfig, Stage, prepare, run_fiun, run_on_stage

TARGET = 100.0
DEFAULT_GRAPHS = "fl:mlp,fl:cnn,ddpl:mlp,ddpl:cnn"
METHODS = ("retrain", *BASELINES)
COMMAND = ".venv/bin/python bench/bench_baselines.py --seed {seed} --json results/bench_baselines.json"


def one_round(stage: Stage, cfg: SimConfig, *, fiun_repeats: int) -> dict[str, float]:
    """Seconds of FIUn (median of the round's runs) and of every baseline, on one trained stage."""
    r = run_on_stage(stage, cfg)
    forget = tuple(sorted(set(cfg.forget)))
    fiun = [r["fiun_seconds"]] + [run_fiun(stage, forget, cfg.settings)["seconds"] for _ in range(fiun_repeats)]
    out = {"fiun": median(fiun), "retrain": r["retrain_seconds"]}
    for name in BASELINES:
        out[name] = r["baselines"][name]["seconds"]
    return out


def bench_graph(framework: str, model: str, *, seed: int, forget: tuple[int, ...], rounds: int,
                fiun_repeats: int = 4, stage: Stage | None = None, clock: str = "thread_cpu") -> dict:
    cfg = SimConfig(framework=framework, model=model, forget=forget, seed=seed, settings=FIUnSettings())
    stage = stage or prepare(cfg)
    with simulation_clock(clock):
        samples = [one_round(stage, cfg, fiun_repeats=fiun_repeats) for _ in range(rounds)]
    speedup = {m: median([s[m] / max(s["fiun"], 1e-12) for s in samples]) for m in METHODS}
    return {"framework": framework, "model": model, "forget": list(forget), "rounds": rounds, "clock": clock,
            "subgraph_nodes": len(stage.umig.unlearning_subgraph(forget)),
            "seconds": {m: median([s[m] for s in samples]) for m in ("fiun", *METHODS)},
            "samples": samples, "speedup": speedup,
            "time_saved_pct": {m: 100.0 * (1.0 - 1.0 / v) for m, v in speedup.items()},
            "target_met": {m: v >= TARGET for m, v in speedup.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="data, topology and training seed")
    ap.add_argument("--graphs", default=DEFAULT_GRAPHS, help="framework:model pairs")
    ap.add_argument("--forget", default="2", type=int_list, help="comma-separated forget labels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", default="thread_cpu", choices=["thread_cpu", "wall"],
                    help="what the simulation's own timers read (default: this thread's CPU time)")
    ap.add_argument("--quick", action="store_true", help="fl:mlp only, 1 round")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    a = ap.parse_args(argv)
    graphs = ["fl:mlp"] if a.quick else a.graphs.split(",")
    rounds = 1 if a.quick else a.rounds
    forget = a.forget
    cases = []
    print(f"{'graph':10s} {'FIUn s':>8s} | " + " ".join(f"{m + ' ×':>17s}" for m in METHODS))
    for g in graphs:
        fw, model = g.split(":")
        c = bench_graph(fw, model, seed=a.seed, forget=forget, rounds=rounds, clock=a.clock)
        print(f"{g:10s} {c['seconds']['fiun']:8.4f} | "
              + " ".join(f"{c['speedup'][m]:16.0f}×" for m in METHODS), flush=True)
        cases.append(c)
        if a.json:  # after every graph, so an interrupted run keeps what it measured
            write_cases(a.json, "baselines", a, rounds=rounds, cases=cases, command=COMMAND.format(seed=a.seed)
                        + ("" if a.graphs == DEFAULT_GRAPHS or a.quick else f" --graphs {a.graphs}")
                        + ("" if a.clock == "thread_cpu" else " --clock wall"),
                        target=TARGET, settings=FIUnSettings().to_dict(), clock=a.clock,
                        complete=len(cases) == len(graphs))
    if a.json:
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
