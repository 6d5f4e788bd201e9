"""Micro-benchmark: the last-layer Fisher of a Linear head on N samples, contenders side by side.

    .venv/bin/python bench/bench_fisher.py --seed 0 --json results/bench_fisher.json

Contenders, each on the same N digits samples (tiled when N exceeds the 1,347 training images):

* ``backbone``      the backbone forward pass alone (no grad, eval, in head_features' chunks of
                    1,024): the floor any Fisher pays;
* ``head_features`` the project's forward (``core.fisher.head_features``: whole model + a hook);
* ``fisher_fwd``    forward + closed-form Fisher, the path every peer runs
                    (``fiun_peer.unlearn.node_model_fisher`` with ``FIUnSettings()``);
* ``closed_form``   ``fisher_from_features`` on precomputed features;
* ``torch_func``    ``per_sample_fisher`` (vmap over per-sample grads) on the same features;
* ``naive_loop``    one autograd backward per sample.

The target (issue 4) is fisher_fwd ≤ 1.2 × backbone. Every ratio is a median of per-round ratios,
rounds interleaved. The comparison trio (closed_form, torch_func, naive_loop) uses the same estimator
and T = 1 (the generic paths have no temperature; T does not change the cost), and their results are
checked against each other.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import Tensor, nn

from bench import int_list
from bench.bench_timing import interleaved, paired_ratio, summary, write_cases
from fiun_peer.core.fisher import Fisher, fisher_from_features, head_features, per_sample_fisher
from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.models import build_model
from fiun_peer.unlearn import node_model_fisher
from simulations.data import load_digits

TARGET = 1.2
CHUNK = 1024  # head_features' default chunk
CLOCK = "thread_cpu"  # torch runs on one thread here, so its CPU time is the work done
COMMAND = ".venv/bin/python bench/bench_fisher.py --seed {seed} --json results/bench_fisher.json"


def backbone(model: nn.Module) -> nn.Module:
    """The zoo model without its head (the modules whose output the head reads)."""
    if hasattr(model, "features"):
        return model.features
    return nn.Sequential(model.stem, model.blocks, model.pool)


def naive_fisher(head: nn.Linear, feats: Tensor, labels: Tensor) -> Fisher:
    """Empirical Fisher by one autograd backward per sample (the textbook loop)."""
    acc = {k: torch.zeros_like(p) for k, p in head.named_parameters()}
    for i in range(feats.shape[0]):
        head.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(feats[i:i + 1]), labels[i:i + 1]).backward()
        for k, p in head.named_parameters():
            acc[k] += p.grad * p.grad
    return {k: v / feats.shape[0] for k, v in acc.items()}


def max_rel_diff(a: Fisher, b: Fisher) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30)) for k in a)


def samples(n: int, seed: int) -> tuple[Tensor, Tensor]:
    ds = load_digits(seed)
    idx = torch.arange(n) % ds.x_train.shape[0]
    return ds.x_train[idx], ds.y_train[idx]


def bench_case(model_name: str, n: int, *, seed: int, rounds: int, naive: bool = True,
               min_sample_s: float = 0.02) -> dict:
    """All contenders on one (model, N); returns times, ratios and the numerical agreement."""
    settings = FIUnSettings()
    x, y = samples(n, seed)
    model = build_model(model_name, tuple(x.shape[1:]), 10, seed=seed).eval()
    head = model.head
    w, b = head.weight.detach(), head.bias.detach()
    body = backbone(model)
    feats = head_features(model, x)

    def fwd() -> None:  # in head_features' chunks, so both forwards see the same batch shapes
        with torch.no_grad():
            for start in range(0, n, CHUNK):
                body(x[start:start + CHUNK])

    contenders = {
        "backbone": fwd,
        "head_features": lambda: head_features(model, x),
        "fisher_fwd": lambda: node_model_fisher(model, x, y, settings),
        "closed_form": lambda: fisher_from_features(feats, w, b, y, estimator=settings.estimator),
        "torch_func": lambda: per_sample_fisher(head, feats, y, estimator=settings.estimator),
    }
    if naive:
        contenders["naive_loop"] = lambda: naive_fisher(head, feats, y)
    t = interleaved(contenders, rounds=rounds, min_sample_s=min_sample_s, clock=CLOCK)
    closed = fisher_from_features(feats, w, b, y, estimator=settings.estimator)
    agree = {"torch_func_vs_closed": max_rel_diff(per_sample_fisher(head, feats, y, estimator=settings.estimator),
                                                  closed)}
    if naive:
        agree["naive_vs_closed"] = max_rel_diff(naive_fisher(head, feats, y), closed)
    ratios = {
        "fisher_fwd_over_backbone": paired_ratio(t["fisher_fwd"], t["backbone"]),
        "head_features_over_backbone": paired_ratio(t["head_features"], t["backbone"]),
        "closed_over_backbone": paired_ratio(t["closed_form"], t["backbone"]),
        "torch_func_over_closed": paired_ratio(t["torch_func"], t["closed_form"]),
    }
    if naive:
        ratios["naive_over_closed"] = paired_ratio(t["naive_loop"], t["closed_form"])
    return {"model": model_name, "n": n, "estimator": settings.estimator, "clock": CLOCK,
            "head_shape": list(w.shape), "times": {k: summary(v) for k, v in t.items()},
            "ratios": ratios, "max_rel_diff": agree,
            "target_met": ratios["fisher_fwd_over_backbone"] <= TARGET}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="data split and model initialisation seed")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--sizes", default="256,1024,4096", type=int_list, help="comma-separated N")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the simulations use 1)")
    ap.add_argument("--quick", action="store_true", help="N=256 only, 3 rounds")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    sizes = [256] if a.quick else list(a.sizes)
    rounds = 3 if a.quick else a.rounds
    cases = []
    print(f"{'model':5s} {'N':>5s} | {'fwd+F/fwd':>9s} {'hf/fwd':>7s} {'F/fwd':>6s} | "
          f"{'func/F':>7s} {'naive/F':>8s} | target ≤{TARGET}")
    for m in a.models.split(","):
        for n in sizes:
            c = bench_case(m, n, seed=a.seed, rounds=rounds)
            r = c["ratios"]
            print(f"{m:5s} {n:5d} | {r['fisher_fwd_over_backbone']:9.3f} {r['head_features_over_backbone']:7.3f} "
                  f"{r['closed_over_backbone']:6.3f} | {r['torch_func_over_closed']:7.1f} "
                  f"{r['naive_over_closed']:8.1f} | {'met' if c['target_met'] else 'NOT met'}", flush=True)
            cases.append(c)
    if a.json:
        write_cases(a.json, "fisher", a, rounds=rounds, command=COMMAND.format(seed=a.seed), cases=cases,
                    target=TARGET)
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
