"""Observing real peers for the network experiments (bench/exp_hyper_distance.py, bench/exp_scale.py,
bench/idle_cpu.py): cluster variants, patient admin calls, CPU and memory readings, and what the
peers' own logs and GetRequest replies say about a request.

The harness only sets the stage and observes real peers: it trains a topology in-process
(``simulations.centralized.prepare``), publishes it onto real ``fiun-peer`` processes (one per model),
submits a request and reads back what the peers recorded. Times come from the peers' own clocks
(same machine, same wall clock): ``received_at`` / ``applied_at`` from GetRequest, and the
``record_stored`` events of their JSON logs. Polling only decides *when* to read, never the number.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from fiun_peer.rpc.admin_client import AdminClient

from . import peers, report
from .peers import Peer, PeerCluster, free_port, p2p_address
from .report import section_markers
from .topology import NodeSpec

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def scratch(workdir: Path | None, prefix: str) -> Iterator[Path]:
    """``workdir`` as it is, or (None) a temporary folder removed afterwards."""
    if workdir is not None:
        yield workdir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def write_topology(nodes: list[NodeSpec], path: Path) -> Path:
    """The ``--topology FILE`` format of ``fiun-sim centralized``, so ``prepare`` trains it unchanged."""
    doc = {"nodes": [{"id": n.id, "parents": list(n.parents), "relation": n.relation, "labels": list(n.labels),
                      "share": n.share, "epochs": n.epochs} for n in nodes]}
    path.write_text(json.dumps(doc, indent=1))
    return path


class RandomBootstrapCluster(PeerCluster):
    """A PeerCluster whose peers do not all hang off the first one: each peer's bootstrap list is
    the first peer plus ``extra`` other peers drawn at random (seeded), so the libp2p connection
    graph is a random graph instead of a star. All libp2p addresses are fixed in advance (a free
    port and the peer id from the key); the bootstrap dials retry until their targets are up.
    Only PeerCluster's bootstrap plan differs: the daemon is unchanged."""

    def __init__(self, *args: object, extra: int = 3, seed: int = 0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.extra, self.seed = extra, seed

    def bootstrap_plan(self, groups: list[list[Peer]]) -> list[tuple[list[str], int]]:
        if any(len(g) != 1 for g in groups):
            raise ValueError("random bootstrap needs one process per peer")
        ports = [free_port(p.host) for p in self.peers]
        addrs = [p2p_address(p, port) for p, port in zip(self.peers, ports, strict=True)]
        rng = random.Random(self.seed)
        plan = []
        for i in range(len(self.peers)):
            others = [j for j in range(1, len(self.peers)) if j != i]
            picks = rng.sample(others, min(self.extra, len(others))) if i else []
            plan.append(([addrs[j] for j in ([0] if i else []) + picks], ports[i]))
        return plan


def make_cluster(root: Path, names: list[str], *, startup_timeout: float, peers_per_process: int = 1,
                 sync_interval: float = 2.0, connect: str = "star", seed: int = 0) -> PeerCluster:
    """A PeerCluster with JSON logs (we read timestamps from them). ``connect="star"`` is the
    harness's default (everyone bootstraps to the first peer); ``"random"`` bootstraps each peer to
    the first and three random others."""
    kwargs: dict = {"log_json": True, "startup_timeout": startup_timeout, "sync_interval": sync_interval,
                    "peers_per_process": peers_per_process}
    if connect == "random":
        if peers_per_process != 1:
            raise ValueError("random bootstrap needs one process per peer")
        return RandomBootstrapCluster(root, names, seed=seed, **kwargs)
    if connect != "star":
        raise ValueError(f"connect must be star or random, not {connect!r}")
    return PeerCluster(root, names, **kwargs)


def peer_events(peer: Peer, event: str | None = None) -> list[dict]:
    """The peer's JSON log lines (optionally only one event kind). Needs one process per peer: a
    shared process writes one log whose lines do not say which of its peers logged them."""
    path = getattr(peer, "log_path", None) or peer.home / "peer.log"
    if path != peer.home / "peer.log":
        raise RuntimeError(f"{peer.name} shares a process log ({path}); its events cannot be told apart")
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if event is None or ev.get("event") == event:
            out.append(ev)
    return out


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class MemorySampler:
    """Samples RSS and USS of every peer process in a background thread. USS (pages private to the
    process) is the honest per-peer cost: torch's shared-library pages count in every RSS."""

    def __init__(self, pids: list[int], interval: float = 2.0) -> None:
        self.pids, self.interval = pids, interval
        self.rss: dict[int, int] = dict.fromkeys(pids, 0)
        self.uss: dict[int, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        for pid in self.pids:
            try:
                info = psutil.Process(pid).memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            self.rss[pid] = max(self.rss[pid], info.rss)
            self.uss[pid] = max(self.uss[pid], info.uss)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def summary(self) -> dict:
        mib = 2**20
        rss, uss = [v / mib for v in self.rss.values() if v], [v / mib for v in self.uss.values() if v]
        return {"processes": len(self.pids), "samples": self.samples, "interval_s": self.interval,
                "peak_rss_mib": {"max": max(rss, default=None), "median": median(rss)},
                "peak_uss_mib": {"max": max(uss, default=None), "median": median(uss),
                                 "sum": sum(uss) if uss else None}}


def patient(peer: Peer) -> AdminClient:
    """The peer's admin client, retrying transient failures for up to 120 s (a peer starved of CPU on a
    machine shared with other jobs can miss a deadline); any other error is raised at once."""
    return peer.client.with_policy(timeout=20.0, patience=120.0)


def wait_lineage(peer: Peer, count: int, *, timeout: float) -> None:
    """Until ``peer`` knows ``count`` models (PeerCluster.wait_lineage, with transient retries)."""
    peers.wait_lineage(peer, count, timeout=timeout, client=patient(peer))


def wait_all_done(group: list[Peer], request_id: str, *, timeout: float) -> dict:
    """simulations.peers.wait_done with transient retries: peer name -> its GetRequestReply."""
    return peers.wait_done(group, request_id, timeout=timeout, clients=patient)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (and their threads)."""
    total = 0.0
    for pid in set(pids):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def cpu_rates(pids: list[int], seconds: float) -> list[float]:
    """Cores each process burns over the next ``seconds`` (CPU-seconds per second), in ``pids`` order."""
    before = [cpu_seconds([pid]) for pid in pids]
    time.sleep(seconds)
    return [(cpu_seconds([pid]) - b) / seconds for pid, b in zip(pids, before, strict=True)]


def wait_quiet(pids: list[int], *, per_peer: float = 0.03, max_share: float = 0.5, probe_s: float = 2.0,
               timeout: float = 120.0) -> dict:
    """Wait until the peer processes burn under ``per_peer`` cores each and under ``max_share`` of
    the machine's cores in all (averaged over ``probe_s``; without the second bound 64 peers would
    count as quiet on 2 saturated cores): a cluster just started is still syncing and greeting, and
    on shared cores that work would be counted in the next measurement. Returns the waited
    seconds, the last rate and the bound."""
    bound = min(per_peer * len(pids), max_share * (os.cpu_count() or 1))
    t0 = time.time()
    while True:
        rate = sum(cpu_rates(list(dict.fromkeys(pids)), probe_s))   # a shared process counts once
        if rate <= bound or time.time() - t0 > timeout:
            return {"waited_s": time.time() - t0, "cpu_rate": rate, "bound": bound, "quiet": rate <= bound}


def run_request(requester: Peer, owners: dict[str, Peer], peers: list[Peer], forget: tuple[int, ...],
                request_id: str, *, timeout: float, idle_probe_s: float = 2.0,
                quiet_timeout: float = 120.0) -> dict:
    """Submit one request to ``requester`` and read, once every peer reports it done, the times the
    peers recorded. All times are seconds after the client's submit time:

    * ``received``: per model, when its owner's reconcile loop first took the request up;
    * ``applied``: per model, when its owner wrote the new version (and sent the receipt);
    * ``receipt_at_requester``: per model, when the requester stored that model's receipt;
    * ``last_receipt_at_requester``, ``last_applied``, ``all_receipts_everywhere`` (the latest
      receipt arrival over every peer and model).

    Also the CPU the peer processes burn: at rest (``idle_cpu_rate``: CPU-s per s over
    ``idle_probe_s`` just before) and from submit until the requester is done (``request_cpu_s``,
    idle share subtracted; per peer in ``peer_request_cpu_s``). On a machine with fewer cores than peers, ``request_cpu_s / cores`` is a
    floor under the wall time that a network of separate machines would not pay.
    """
    pids = [p.proc.pid for p in peers if p.proc is not None]
    by_name = {p.name: p.proc.pid for p in peers if p.proc is not None}
    quiet = wait_quiet(pids, timeout=quiet_timeout)
    idle_each = dict(zip(by_name, cpu_rates(list(by_name.values()), idle_probe_s), strict=True))
    idle_rate = sum(idle_each.values())
    c0_each = {n: cpu_seconds([pid]) for n, pid in by_name.items()}
    c0 = sum(c0_each.values())
    t0 = time.time()
    reply = patient(requester).request_unlearning(list(forget), request_id=request_id, timeout=60)  # idempotent by id
    ack = time.time() - t0
    wait_all_done([requester], request_id, timeout=timeout)
    polled = time.time() - t0
    request_cpu = cpu_seconds(pids) - c0 - idle_rate * polled
    # Per peer: what each one spent on the request (its own share of work, whatever the depth).
    peer_cpu = {n: cpu_seconds([pid]) - c0_each[n] - idle_each[n] * polled for n, pid in by_name.items()}
    everywhere = wait_all_done(peers, request_id, timeout=timeout)
    affected = list(reply.affected_models)
    at_requester = {m.model_id: m.applied_at - t0 for m in everywhere[requester.name].models}
    received, applied, states = {}, {}, {}
    for m in affected:
        own = {x.model_id: x for x in everywhere[owners[m].name].models}[m]
        received[m], applied[m], states[m] = own.received_at - t0, own.applied_at - t0, own.state
    latest = [x.applied_at - t0 for r in everywhere.values() for x in r.models]
    return {"request_id": request_id, "forget": list(forget), "t_submit": t0, "affected": affected,
            "discovery": list(reply.discovery_models), "states": states, "ack_s": ack,
            "polled_done_at_requester_s": polled, "idle_cpu_rate": idle_rate, "settle": quiet,
            "request_cpu_s": request_cpu, "peer_request_cpu_s": peer_cpu,
            "cores": os.cpu_count(), "received": received, "applied": applied,
            "receipt_at_requester": at_requester,
            "last_receipt_at_requester": max(at_requester.values()), "last_applied": max(applied.values()),
            "all_receipts_everywhere": max(latest)}


def receipt_arrivals(peer: Peer, run: dict, until: float) -> dict:
    """Which path each receipt of ``run`` took to ``peer`` (gossip, anti-entropy sync, push, local)
    and how long after its owner applied it, from the peer's ``record_stored`` events between the
    run's submit time and ``until``."""
    first: dict[str, dict] = {}
    for ev in peer_events(peer, "record_stored"):
        if ev.get("kind") == "receipt" and run["t_submit"] <= ev["ts"] < until:
            first.setdefault(ev["subject"].split(":", 1)[-1], ev)
    by_source: dict[str, int] = {}
    delay: dict[str, float] = {}
    for m, ev in first.items():
        src = str(ev.get("source", "")).split(":")[0]
        by_source[src] = by_source.get(src, 0) + 1
        if m in run["applied"] and src != "local":
            delay[m] = ev["ts"] - run["t_submit"] - run["applied"][m]
    return {"by_source": by_source, "delay_after_apply_s": delay,
            "delay_median_s": median(list(delay.values())), "delay_max_s": max(delay.values(), default=None)}


def request_paths(owners: dict[str, Peer], run: dict, until: float) -> dict:
    """By which path the request record and the discovery announcements reached each affected
    model's owner, and when that owner applied: the two groups' latest apply times show what waiting
    for anti-entropy instead of gossip costs."""
    rid = run["request_id"]
    path: dict[str, str] = {}
    for m in run["affected"]:
        srcs = []
        for ev in peer_events(owners[m], "record_stored"):
            if not run["t_submit"] <= ev["ts"] < until:
                continue
            if ev["subject"] == f"request:{rid}" or ev["subject"].startswith(f"fisher:{rid}:"):
                srcs.append(str(ev.get("source", "")).split(":")[0])
        path[m] = "local" if "local" in srcs else ("sync" if "sync" in srcs else (srcs[0] if srcs else "?"))
    groups: dict[str, list[float]] = {}
    for m, src in path.items():
        groups.setdefault(src, []).append(run["applied"][m])
    return {"by_model": path, "count": {k: len(v) for k, v in groups.items()},
            "last_applied_s": {k: max(v) for k, v in groups.items()}}


def publish_times(peers: list[Peer], *, before: float) -> dict:
    """How long each lineage record published before ``before`` took to reach every peer, from the
    peers' ``record_stored`` log events: the publisher's local store (just before it gossips) to each
    other peer's first store of that model's record. Also counts by which path records arrived
    (gossip, anti-entropy sync, push), the key to reading the latencies."""
    first: dict[str, dict[str, float]] = {}       # subject -> peer -> first store time
    origin: dict[str, tuple[float, str]] = {}
    sources: dict[str, int] = {}
    for p in peers:
        for ev in peer_events(p, "record_stored"):
            if ev.get("kind") != "lineage" or ev["ts"] >= before:
                continue
            subj = ev["subject"]
            first.setdefault(subj, {}).setdefault(p.name, ev["ts"])
            src = str(ev.get("source", "")).split(":")[0]
            if src == "local":
                origin.setdefault(subj, (ev["ts"], p.name))
            else:
                sources[src] = sources.get(src, 0) + 1
    per_record, per_arrival, incomplete = {}, [], []
    for subj, (t_pub, publisher) in origin.items():
        arrivals = [t - t_pub for name, t in first[subj].items() if name != publisher]
        if len(first[subj]) < len(peers):
            incomplete.append(subj)
        per_record[subj] = max(arrivals, default=0.0)
        per_arrival += arrivals
    spread = list(per_record.values())
    return {"records": len(per_record), "incomplete": incomplete, "sources": sources,
            "reach_all_s": {"median": median(spread), "p99": pct(spread, 99), "max": max(spread, default=None)},
            "per_arrival_s": {"median": median(per_arrival), "p99": pct(per_arrival, 99)},
            "per_record_s": per_record}


def write_section(name: str, body: str, path: Path | None = None) -> Path:
    """Replace (or append) section ``name`` of RESULTS.md (simulations.report.write_section)."""
    begin, end = section_markers(name)
    return report.write_section(path or ROOT / "RESULTS.md", f"{begin}\n{body.rstrip()}\n{end}")
