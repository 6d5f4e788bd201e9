"""CPU an idle network of N real peers burns, after it has started (the floor under every measurement).

    .venv/bin/python bench/idle_cpu.py --peers 32 --windows 6

Starts N ``fiun-peer`` processes the way the experiments do (``simulations.observe.make_cluster``: everyone
bootstraps to the first, sync every 2 s), publishes nothing, and prints the CPU-seconds per second
all of them burn in each 10-s window from the moment the last one is up (total, and max / median
per peer). A network just started is still greeting and syncing; a healthy one then falls to a
small fraction of a core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from simulations import observe as nx


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=32)
    ap.add_argument("--windows", type=int, default=6, help="10-s windows to measure")
    ap.add_argument("--sync-interval", type=float, default=2.0)
    args = ap.parse_args(argv)
    names = [f"n{i}" for i in range(args.peers)]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="fiun-idle-") as d, \
            nx.make_cluster(Path(d), names, startup_timeout=600, sync_interval=args.sync_interval) as cluster:
        print(f"{args.peers} peers up in {time.time() - t0:.0f}s", flush=True)
        pids = [p.proc.pid for p in cluster.peers]
        for k in range(args.windows):
            rates = sorted(nx.cpu_rates(pids, 10))
            print(f"t={10 * (k + 1)}s after up: {sum(rates):.2f} cores in all, per peer max {rates[-1]:.3f} "
                  f"median {rates[len(rates) // 2]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
