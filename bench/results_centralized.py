"""Regenerate the centralized tables of RESULTS.md: every framework x model x label set on digits.

    .venv/bin/python bench/results_centralized.py --seed 0 --out results/centralized.json

Uses FIUnSettings() defaults (one setting for every cell) and, with --paper, the paper-exact
settings for comparison. Each (framework, model) stage is trained once and reused for all label sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fiun_peer.core.fiun import FIUnSettings
from simulations.centralized import SimConfig, prepare, run_on_stage
from simulations.report import json_ready, quality

LABEL_SETS = [(2,), (5,), (9,), (2, 9), (1, 4, 6, 8)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frameworks", default="fl,ddpl,il,tl")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--paper", action="store_true", help="use FIUnSettings.paper() instead of the defaults")
    ap.add_argument("--out", default="results/centralized.json")
    a = ap.parse_args()
    settings = FIUnSettings.paper() if a.paper else FIUnSettings()
    runs = []
    for fw in a.frameworks.split(","):
        for model in a.models.split(","):
            base = SimConfig(framework=fw, model=model, seed=a.seed, settings=settings)
            t0 = time.time()
            stage = prepare(base)
            for forget in LABEL_SETS:
                cfg = SimConfig(framework=fw, model=model, seed=a.seed, settings=settings, forget=forget)
                r = json_ready(run_on_stage(stage, cfg))
                r["quality"] = quality(r)
                runs.append(r)
                print(f"{fw:5s} {model:4s} forget={','.join(map(str, forget)):8s} ok={r['quality']['ok']!s:5s} "
                      f"speedup={r['speedup']:.0f}x", file=sys.stderr, flush=True)
            print(f"  ({fw}/{model} took {time.time() - t0:.0f}s)", file=sys.stderr)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"settings": settings.to_dict(), "seed": a.seed, "runs": runs}, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
