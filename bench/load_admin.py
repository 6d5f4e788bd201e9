"""Bounded load on one peer's admin API, plus the gossip burst it causes.

Two real peers on loopback. Alice owns a tiny model (so her key is a network member and her requests
count); then CLIENTS threads send CALLS mixed admin calls to Alice (Status, ListLineage, GetRequest,
ListReceipts and REQUESTS RequestUnlearning calls, each of which signs a record and gossips it).
Reports latency percentiles per method, errors, and whether Bob ended up with every record (gossip
plus anti-entropy sync): ``lost`` must be 0.

    .venv/bin/python bench/load_admin.py --calls 2000 --clients 8 --requests 500 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from fiun_peer.models import build_model
from fiun_peer.rpc.admin_client import AdminClient, RpcFailure
from fiun_peer.tensors import to_bytes
from simulations.peers import PeerCluster

FORGET = [7]  # a label no model holds: requests travel and are stored, but need no torch work


def _publish_tiny_model(peer) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    y = torch.tensor([0, 1] * 10)
    peer.client.publish("load-model", to_bytes(model.state_dict()), to_bytes({"x": torch.rand(len(y), 1, 8, 8), "y": y}),
                        architecture_json=json.dumps({"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}),
                        timeout=120)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _plan(calls: int, requests: int, seed: int) -> list[str]:
    """The call mix: ``requests`` RequestUnlearning, the rest spread over the read-only methods."""
    rng = random.Random(seed)
    reads = ["Status", "ListLineage", "GetRequest", "ListReceipts"]
    plan = ["RequestUnlearning"] * requests + [reads[i % len(reads)] for i in range(calls - requests)]
    rng.shuffle(plan)
    return plan


def run_load(root: Path, *, calls: int = 2000, clients: int = 8, requests: int = 500, seed: int = 0,
             converge_timeout: float = 180.0) -> dict[str, Any]:
    if requests > calls:
        raise ValueError("requests must not exceed calls")
    plan = _plan(calls, requests, seed)
    with PeerCluster(root, ["alice", "bob"], sync_interval=2.0) as cluster:
        alice, bob = cluster.peers
        _publish_tiny_model(alice)
        cluster.wait_lineage(bob, 1)
        latencies: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        made: list[str] = []
        lock = threading.Lock()
        chunks = [plan[i::clients] for i in range(clients)]

        def client(index: int, methods: list[str]) -> None:
            with AdminClient.for_home(alice.home, alice.admin_address, timeout=60) as admin:  # a channel each
                reads = {"Status": admin.status, "ListLineage": admin.list_lineage, "ListReceipts": admin.list_receipts}
                for n, method in enumerate(methods):
                    rid = f"load-{index}-{n}"
                    with lock:
                        known = made[-1] if made else ""
                    t0 = time.perf_counter()
                    try:
                        if method == "RequestUnlearning":
                            admin.request_unlearning(FORGET, request_id=rid, force=True)  # any labels
                            with lock:
                                made.append(rid)
                        elif method == "GetRequest":
                            if known:
                                admin.get_request(known)
                            else:
                                admin.status()
                        else:
                            reads[method]()
                    except RpcFailure as exc:
                        with lock:
                            errors.append(f"{method}: {exc.code}: {exc.message}")
                        continue
                    with lock:
                        latencies[method].append(time.perf_counter() - t0)

        threads = [threading.Thread(target=client, args=(i, chunk)) for i, chunk in enumerate(chunks)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0

        # Every request record Alice signed must reach Bob (gossip, repaired by sync).
        want = set(made)
        deadline = time.monotonic() + converge_timeout
        t1 = time.perf_counter()
        have: set[str] = set()
        while time.monotonic() < deadline:
            have = _request_ids(bob)
            if want <= have:
                break
            time.sleep(0.5)
        converge = time.perf_counter() - t1
        status = alice.client.status(timeout=30)
    every = [x for v in latencies.values() for x in v]
    return {
        "calls": calls, "clients": clients, "requests": requests, "seed": seed,
        "ok_calls": len(every), "errors": len(errors), "error_samples": errors[:5],
        "seconds": round(elapsed, 3), "calls_per_second": round(len(every) / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "p50": round(1000 * _percentile(every, 50), 2), "p99": round(1000 * _percentile(every, 99), 2),
            "max": round(1000 * max(every, default=0.0), 2),
            "mean": round(1000 * statistics.fmean(every), 2) if every else 0.0},
        "latency_ms_by_method": {m: {"n": len(v), "p50": round(1000 * _percentile(v, 50), 2),
                                     "p99": round(1000 * _percentile(v, 99), 2)} for m, v in sorted(latencies.items())},
        "records_published": len(want), "records_at_bob": len(want & have), "lost": len(want - have),
        "seconds_until_bob_had_all": round(converge, 2),
        "alice_records": status.records,
    }


def _request_ids(peer) -> set[str]:
    """Request ids a peer holds, read from its records over RecordService (no admin call needed)."""
    from fiun_peer.records import parse_record
    from fiun_peer.rpc.record_service import sync_records

    out = set()
    for env in sync_records(peer.grpc, [], timeout=60):
        rec = parse_record(env)
        if rec.kind == "request":
            out.add(rec.predicate["request_id"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="how many of the calls are RequestUnlearning")
    p.add_argument("--seed", type=int, default=0, help="shuffles the call mix")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fiun-load-") as tmp:
        r = run_load(Path(tmp), calls=args.calls, clients=args.clients, requests=args.requests, seed=args.seed)
    lat = r["latency_ms"]
    print(f"{r['ok_calls']}/{r['calls']} admin calls ok from {r['clients']} clients in {r['seconds']} s "
          f"({r['calls_per_second']}/s), errors {r['errors']}")
    print(f"latency ms: p50 {lat['p50']}  p99 {lat['p99']}  max {lat['max']}")
    for m, v in r["latency_ms_by_method"].items():
        print(f"  {m:<18} n={v['n']:<5} p50 {v['p50']:>8} ms  p99 {v['p99']:>8} ms")
    print(f"gossip burst: {r['records_published']} request records, {r['records_at_bob']} at bob, "
          f"lost {r['lost']} (bob had all after {r['seconds_until_bob_had_all']} s)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["errors"] == 0 and r["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
