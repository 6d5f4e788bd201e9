"""Bring your own model: what FIUn costs on models in their own formats, and what a version costs on disk.

    .venv/bin/python bench/bench_formats.py --seed 0 --json results/bench_formats.json

1. Forward + Fisher vs forward. For each model, loaded the way a peer loads it
   (``fiun_peer.formats.prepare``), on N samples: ``forward`` = the model's logits
   (``Classifier.logits``: the whole network, no grad, in the peer's chunks) and ``fwd+F`` =
   ``fiun_peer.unlearn.node_model_fisher`` with ``FIUnSettings()`` (the backbone up to the head's
   input, then the closed-form Fisher: what a peer runs at publication, Eq. 4, and on forget data,
   Eq. 3). Target: fwd+F ≤ 1.2 × forward on ResNet-18 at N ≥ 256. Rounds interleaved, medians of
   per-round ratios, the thread's CPU time (torch on one thread).
2. Disk per version. Version 1 stored as a peer stores it, then ten unlearning requests (the head
   from Eqs. 5-6 each time), through ``fiun_peer.formats.versions`` in a real ``Store``: the bytes
   of ``blobs/`` after version 1 and after version 11, against what storing every version whole
   (the code before head-only versions) costs: version 1 plus ten whole artifacts (their sizes
   measured, each the artifact with its new head).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_timing import interleaved, paired_ratio, summary, write_json
from fiun_peer.core.fiun import FIUnSettings
from fiun_peer.formats import versions
from fiun_peer.store import Store
from fiun_peer.unlearn import apply_fiun_head, node_model_fisher, node_unlearning_fisher
from simulations import byom
from simulations.data import load_dataset
from simulations.report import machine

TARGET = 1.2
COMMAND = ".venv/bin/python bench/bench_formats.py --seed {seed} --json results/bench_formats.json"
#: (model, data set, N, image size override) for the forward-pass comparison.
CASES = [("torchvision:resnet18", "digits32", 256, None), ("torchvision:resnet18", "digits32", 1024, None),
         ("torchvision:resnet18", "digits32", 256, 224), ("torch-export:resnet18", "digits32", 256, None),
         ("torch-export:bn-cnn", "digits", 256, None), ("hf-vit-tiny", "digits", 256, None),
         ("hf-bert-tiny", "tokens", 256, None), ("torchvision:mobilenet_v3_small", "digits32", 256, None)]
DISK = ["torchvision:resnet18", "torch-export:bn-cnn", "hf-vit-tiny", "hf-bert-tiny"]


def samples(dataset: str, n: int, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset(dataset)
    idx = torch.arange(n) % ds.x_train.shape[0]
    x = ds.x_train[idx]
    if size is not None:   # the classic ImageNet input: the same images upsampled
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
    return x, ds.y_train[idx]


def publish(name: str, x: torch.Tensor, y: torch.Tensor, seed: int):  # noqa: ANN201
    model = byom.build(name, tuple(x.shape[1:]), 10, seed=seed).eval()
    return byom.publication(name, model, x, y)


def forward_case(name: str, dataset: str, n: int, size: int | None, *, seed: int, rounds: int) -> dict:
    x, y = samples(dataset, n, size)
    pub, fields = publish(name, x, y, seed)
    c, s = pub.classifier, FIUnSettings()
    times = interleaved({"forward": lambda: c.logits(pub.inputs),
                         "fisher_fwd": lambda: node_model_fisher(c, pub.inputs, pub.y, s)},
                        rounds=rounds, clock="thread_cpu")
    ratio = paired_ratio(times["fisher_fwd"], times["forward"])
    return {"model": name, "format": fields["format"], "dataset": dataset, "n": n,
            "input": list(x.shape[1:]), "head": list(c.weight.shape), "chunk": c.chunk,
            "times": {k: summary(v) for k, v in times.items()}, "ratio": ratio, "target_met": ratio <= TARGET}


def blob_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in store.blob_root.glob("??/*"))


def disk_case(name: str, *, seed: int, versions_n: int = 10) -> dict:
    dataset = byom.default_dataset(name)
    ds = load_dataset(dataset)
    x, y = ds.x_train[:200], ds.y_train[:200]
    pub, fields = publish(name, x, y, seed)
    s = FIUnSettings()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp)) as store:
        v1 = store.put_blob(fields["weights"], kind="weights")
        store.put_state("model:m", {"digest": v1, "original": v1, "version": 1})
        versions.remember(store, "m", pub.spec)
        after_v1 = blob_bytes(store)
        mf = node_model_fisher(pub.classifier, pub.inputs, pub.y, s)
        digest, whole, seconds, heads = v1, [], [], []
        for i in range(versions_n):
            forget = [i % 10]
            c = versions.load_version(store, "m", pub.architecture, digest)
            head = apply_fiun_head(c, mf, [node_unlearning_fisher(c, pub.inputs, pub.y, forget, s)], s,
                                   forget_labels=forget)
            t0 = time.perf_counter()
            new = versions.new_version(c, head)
            versions.record(store, "m", new)
            seconds.append(time.perf_counter() - t0)
            whole.append(len(c.artifact()))          # what storing the version whole would have cost
            heads.append(store.blob_size(versions.manifest(store, new.digest)["head"]))
            digest = new.digest
        after = blob_bytes(store)
        rebuilt = versions.read_artifact(store, "m", pub.architecture, digest)
    import hashlib

    return {"model": name, "format": fields["format"], "artifact_bytes": len(fields["weights"]),
            "versions": versions_n, "blobs_after_v1": after_v1, "blobs_after": after,
            "blobs_if_whole": after_v1 + sum(whole), "head_bytes": heads, "whole_bytes": whole,
            "rebuilt_matches_digest": hashlib.sha256(rebuilt).hexdigest() == digest,
            "seconds_per_version": summary(seconds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default="results/bench_formats.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, the small cases only")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    cases = [c for c in CASES if not a.quick or (c[2] <= 256 and c[3] is None and "resnet" not in c[0])]
    out_cases = []
    for name, dataset, n, size in cases:
        rounds = 2 if a.quick else (3 if size else a.rounds)
        r = forward_case(name, dataset, n, size, seed=a.seed, rounds=rounds)
        print(f"{name:32s} N={n:5d} input={r['input']} fwd+F/forward={r['ratio']:.3f}", file=sys.stderr, flush=True)
        out_cases.append(r)
    disk = []
    for name in DISK if not a.quick else DISK[1:2]:
        d = disk_case(name, seed=a.seed, versions_n=2 if a.quick else 10)
        print(f"{name:32s} disk {d['blobs_after']:,} B head-only vs {d['blobs_if_whole']:,} B whole", file=sys.stderr,
              flush=True)
        disk.append(d)
    write_json({"command": COMMAND.format(seed=a.seed), "seed": a.seed, "target": TARGET, "rounds": a.rounds,
                "clock": "thread_cpu", "machine": machine(), "cases": out_cases, "disk": disk}, a.json)
    print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
