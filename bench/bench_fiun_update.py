"""FIUn's time per node before and after issue 13 (the forget-row restriction and retained-class gauge).

    .venv/bin/python bench/bench_fiun_update.py --seed 0 --json results/bench_fiun_update.json

What each peer runs at request time for one model, `fiun_peer.unlearn.apply_fiun` (Eqs. 5-6 on the
head and the new state dict), with `FIUnSettings()` (rows=forget, γ=0) against the defaults before
(rows=all, γ=3), interleaved round by round on this thread's CPU clock. Cases: the zoo MLP and CNN
(10 × 128 heads, digits) with 1 and 4 discovery Fishers, and a ResNet-18-sized head (100 × 512) on a
plain Linear model. Random Fishers; the cost does not depend on their values. Target: new / old ≤ 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from torch import nn

from bench.bench_timing import interleaved, paired_ratio, summary, write_json
from fiun_peer.core.fisher import find_head
from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.models import build_model
from fiun_peer.unlearn import apply_fiun
from simulations.report import machine

OLD = replace(FIUnSettings(), rows="all", gamma=3.0)
NEW = FIUnSettings()
TARGET = 2.0


class _WideHead(nn.Module):
    """A stand-in for ResNet-18 on CIFAR-100: 512 features into a 100-class Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(16, 512)
        self.head = nn.Linear(512, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def _case(model: nn.Module, n_fishers: int, gen: torch.Generator) -> dict:
    _, head = find_head(model)
    shapes = {"weight": head.weight.shape, "bias": head.bias.shape}
    rand = lambda: {k: torch.rand(s, generator=gen) for k, s in shapes.items()}  # noqa: E731
    return {"model": model, "mf": rand(), "fishers": [rand() for _ in range(n_fishers)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default="results/bench_fiun_update.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(a.seed)
    models = {"mlp": build_model("mlp", (1, 8, 8), 10, seed=a.seed),
              "cnn": build_model("cnn", (1, 8, 8), 10, seed=a.seed), "wide-100x512": _WideHead()}
    rows = []
    for name, model in models.items():
        for n_fishers in (1, 4):
            c = _case(model.eval(), n_fishers, gen)
            forget = [2] if n_fishers == 1 else [1, 4, 6, 8]
            samples = interleaved({
                "old": lambda c=c, f=forget: apply_fiun(c["model"], c["mf"], c["fishers"], OLD, forget_labels=f),
                "new": lambda c=c, f=forget: apply_fiun(c["model"], c["mf"], c["fishers"], NEW, forget_labels=f),
            }, rounds=a.rounds, min_sample_s=0.02, clock="thread_cpu")
            ratio = paired_ratio(samples["new"], samples["old"])
            rows.append({"model": name, "discovery_fishers": n_fishers, "forget": forget,
                         "old": summary(samples["old"]), "new": summary(samples["new"]), "new_over_old": ratio,
                         "meets": ratio <= TARGET})
            print(f"{name:13s} K={n_fishers} old {1e3 * rows[-1]['old']['median_s']:.3f} ms  new "
                  f"{1e3 * rows[-1]['new']['median_s']:.3f} ms  new/old {ratio:.2f}", file=sys.stderr)
    write_json({"command": f".venv/bin/python bench/bench_fiun_update.py --seed {a.seed} --json {a.json}",
                "seed": a.seed, "rounds": a.rounds, "target": TARGET, "old_settings": OLD.to_dict(),
                "new_settings": NEW.to_dict(), "machine": machine(), "rows": rows}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
