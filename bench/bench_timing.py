"""Shared helpers for the bench/ micro-benchmarks: interleaved timing (the machine record and JSON
writer are simulations.report's).

Absolute times on a small shared machine are noise; what is comparable is a *ratio* measured side by
side. So every contender runs once per round, in an order rotated each round, and ratios are taken
per round (paired) before the median, which cancels load that drifts between rounds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from simulations import report

CLOCKS = {"wall": time.perf_counter, "thread_cpu": time.thread_time}  # bound now, before any swap


def interleaved(contenders: Mapping[str, Callable[[], object]], *, rounds: int, min_sample_s: float = 0.0,
                warmup: int = 1, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round.

    A sample is the mean of enough back-to-back calls to last about ``min_sample_s`` (calibrated
    once per contender after warm-up), so sub-millisecond calls are not lost in timer and
    scheduler noise. ``clock="thread_cpu"`` counts only the CPU time of the calling thread: on a
    shared machine that leaves out the time other processes held the core, which wall time cannot;
    it is exact for single-threaded work (torch with one thread) and wrong for anything that works
    in other threads (gRPC, sockets), which must use ``"wall"``.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    now = CLOCKS[clock]
    names = list(contenders)
    inner: dict[str, int] = {}
    for name in names:
        for _ in range(max(warmup, 1)):
            t0 = now()
            contenders[name]()
            once = now() - t0
        inner[name] = max(1, math.ceil(min_sample_s / max(once, 1e-9)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            fn = contenders[name]
            t0 = now()
            for _ in range(inner[name]):
                fn()
            samples[name].append((now() - t0) / inner[name])
    return samples


@contextmanager
def simulation_clock(clock: str) -> Iterator[None]:
    """Make code that times itself with ``time.perf_counter`` (the simulations do) read ``clock``.

    With "thread_cpu" the simulations' own timers count this thread's CPU time, which for torch on
    one thread is the work done, not the time other processes held the core. Single-threaded use
    only: it swaps the attribute on the ``time`` module for the duration of the block.
    """
    saved = time.perf_counter
    time.perf_counter = CLOCKS[clock]
    try:
        yield
    finally:
        time.perf_counter = saved


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r]."""
    if len(num) != len(den) or not num:
        raise ValueError("paired samples must be non-empty and of equal length")
    return median([a / max(b, 1e-12) for a, b in zip(num, den, strict=True)])


def summary(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median_s": median(samples), "p25_s": float(qs[0]), "p75_s": float(qs[2]), "rounds": len(samples)}


def write_json(obj: dict, path: str | Path) -> None:
    """simulations.report.write_json, indented by one (the results/bench_*.json files as they are)."""
    report.write_json(obj, path, indent=1)


def write_cases(path: str | Path, benchmark: str, args: argparse.Namespace, *, rounds: int, command: str,
                cases: list[dict], **extra: object) -> None:
    """The results/bench_NAME.json record of a micro-benchmark run with ``--seed`` and ``--quick``:
    its cases, the command that reproduces them and the machine they were measured on."""
    write_json({"benchmark": benchmark, "seed": args.seed, "quick": args.quick, "rounds": rounds, **extra,
                "command": command + (" --quick" if args.quick else ""), "machine": report.machine(),
                "cases": cases}, path)
