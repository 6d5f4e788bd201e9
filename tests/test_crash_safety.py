"""Crash safety: peers SIGKILLed at every step of applying an unlearning request come back with their
model either in the old or in the new version (never torn), apply each request exactly once and
publish each receipt (and lineage version) exactly once.

Kills come from named failpoints (``fiun_peer.faults``: after the pull, mid-write of a blob, inside
the apply transaction, before the receipt, ...) and from the test at random moments, with failpoint
sleeps widening the windows between steps. The store is inspected after every kill, before the
restart, on a copy (so the inspection cannot repair anything the restart would have to).

``pytest -m slow tests/test_crash_safety.py -s`` runs the long variant (100 kills) and prints the
figures for RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from fiun_peer import faults
from fiun_peer.records import parse_record
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.store import Store
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.peers import Peer, PeerCluster, converged_records

# -- failpoints, in this process ---------------------------------------------------------------


@pytest.fixture
def no_failpoints():
    yield
    faults.configure("")


def test_failpoint_spec_parses_counts_and_chains(no_failpoints):
    faults.configure("p=2*off->raise;q=sleep(0.01)")
    faults.point("p")
    faults.point("p")                       # two passes, then the next term takes over
    with pytest.raises(faults.FailpointFired):
        faults.point("p")
    assert faults.hits("p") == 3
    t0 = time.perf_counter()
    faults.point("q")
    assert time.perf_counter() - t0 >= 0.01  # it slept (a lower bound, not a timing figure)
    faults.point("unconfigured")
    assert faults.hits("unconfigured") == 0


def test_counted_last_term_turns_the_point_off(no_failpoints):
    faults.configure("p=1*raise")
    with pytest.raises(faults.FailpointFired):
        faults.point("p")
    faults.point("p")                       # used up: passes from now on
    assert faults.hits("p") == 2


def test_probability_zero_never_fires(no_failpoints):
    faults.configure("p=0%raise")
    for _ in range(50):
        faults.point("p")
    assert faults.hits("p") == 50


@pytest.mark.parametrize("spec", ["p", "p=explode", "P=kill", "p=sleep(x)", "p=150%kill", "p=kill->"])
def test_malformed_spec_is_a_clear_error(spec, no_failpoints):
    with pytest.raises(faults.FailpointError, match="FIUN_FAILPOINTS"):
        faults.configure(spec)


def _python(code: str, spec: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, faults.ENV: spec}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_kill_mid_blob_write_leaves_no_torn_blob(tmp_path):
    """SIGKILL halfway through writing a blob: no file under the digest, half a temp file, which
    the next open removes; writing again stores the whole blob."""
    data = os.urandom(1 << 16)
    (tmp_path / "data").write_bytes(data)
    code = ("from pathlib import Path; from fiun_peer.store import Store; "
            "Store(Path('home')).put_blob(Path('data').read_bytes(), kind='weights')")
    out = _python(code, "mid_write=kill", tmp_path)
    assert out.returncode == -9, out.stderr
    digest = hashlib.sha256(data).hexdigest()
    assert f"failpoint mid_write fired: kill {digest}" in out.stderr
    temp = list((tmp_path / "home" / "blobs").glob("*/.*.tmp"))
    assert len(temp) == 1 and temp[0].stat().st_size == len(data) // 2
    with Store(tmp_path / "home") as s:
        assert s.removed_temp_files == 1 and not s.has_blob(digest)
        assert not list((tmp_path / "home" / "blobs").glob("*/.*.tmp"))
        assert s.put_blob(data, kind="weights") == digest and s.verify_blob(digest)


def test_kill_before_commit_rolls_the_whole_step_back(tmp_path):
    code = ("from pathlib import Path; from fiun_peer.store import Store; s = Store(Path('home'))\n"
            "with s.transaction():\n"
            "    s.put_state('model:m', {'version': 2})\n"
            "    s.put_state('req:r:m', {'state': 'applied'})\n")
    with Store(tmp_path / "home") as s:
        s.put_state("model:m", {"version": 1})
    # Store() runs one transaction (the schema) before ours: pass it, kill at the commit of ours.
    out = _python(code, "before_commit=1*off->kill", tmp_path)
    assert out.returncode == -9, out.stderr
    with Store(tmp_path / "home") as s:
        assert s.get_state("model:m") == {"version": 1} and s.get_state("req:r:m") is None


# -- the kill loop on real peers ---------------------------------------------------------------

AGENT_POINTS = ("before_announce", "after_pull", "after_new_blob", "apply_mid_txn", "before_receipt",
                "after_lineage")
# Store-level points fire on every write, so they are aimed: "@after_pull" arms mid_write at the
# first file write after the pull (the new model's blob), "@after_new_blob" arms before_commit at the
# apply transaction. The plain ones kill at a random hit (startup writes included).
STORE_TARGETS = {
    "mid_write@after_pull": "mid_write=kill@after_pull",
    "before_rename@after_pull": "before_rename=kill@after_pull",
    "before_commit@after_new_blob": "before_commit=kill@after_new_blob",
    "mid_write": "mid_write={n}*off->kill",
    "before_commit": "before_commit={n}*off->kill",
}
TARGETS = (*AGENT_POINTS, *STORE_TARGETS)
# Sleeps on the agent's steps in every run, so a kill from outside lands between steps, not only
# in the (long) compute phases.
SLEEPS = {p: "sleep(0.15)" for p in AGENT_POINTS}
FIRED = re.compile(r"failpoint (\w+) fired: kill ?(\S*)")
LABELS = (0, 1, 2, 3, 4, 5)   # held by both g and a (il): both are discovery nodes, a pulls g's Fisher


@dataclass
class Kill:
    victim: str
    model: str
    request: str
    target: str                    # what was aimed at: a TARGETS entry, or "random"
    how: str                       # the failpoint that fired (from the peer's log), or "random"
    detail: str
    state_digest: str
    consistent: bool               # model state and request state agree (the apply step is atomic)
    blob_ok: bool                  # the state's version's blobs exist and hash to their names
    torn_blobs: int                # stored blobs (any) whose bytes do not hash to their name
    temp_files: int
    verdict: str = ""              # old | new | torn, decided once the request's receipt exists


@dataclass
class Summary:
    kills: list[Kill] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    not_reached: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        how = Counter(k.how for k in self.kills)
        verdicts = Counter(k.verdict for k in self.kills)
        return (f"crash-safety: kills={len(self.kills)} "
                f"({', '.join(f'{h}={n}' for h, n in sorted(how.items()))}); "
                f"state after kill old={verdicts['old']} new={verdicts['new']} torn={verdicts['torn']}; "
                f"requests={len(self.requests)} (each applied once per model, one receipt and one lineage "
                f"version each); temp files left by kills={sum(k.temp_files for k in self.kills)} "
                f"(all removed at restart); armed-not-reached={self.not_reached}; "
                f"seconds={self.seconds:.0f}")


def version_blobs(states: dict, digest: str) -> list[str]:
    """The blobs a model version is made of: its whole artifact (version 1), or, for a later
    (head-only) version, the version-1 artifact and its head, named by its manifest."""
    m = states.get(f"ver:{digest}")
    return [digest] if m is None else [m["artifact"], m["head"]]


def _blob_ok(home: Path, digest: str) -> bool:
    blob = home / "blobs" / digest[:2] / digest
    return blob.is_file() and hashlib.sha256(blob.read_bytes()).hexdigest() == digest


def inspect_store(home: Path, model: str, request: str) -> dict:
    """What a restart of this (dead) peer will find: read from a copy of its SQLite files."""
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal", "-shm"):
            src = home / f"store.sqlite{suffix}"
            if src.exists():
                shutil.copy2(src, Path(tmp) / src.name)
        con = sqlite3.connect(Path(tmp) / "store.sqlite")
        try:
            states = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM state")}
        finally:
            con.close()
    torn = temp = 0
    for f in (home / "blobs").glob("*/*"):
        if f.name.endswith(".tmp"):
            temp += 1
        elif f.parent.name != "incoming" and hashlib.sha256(f.read_bytes()).hexdigest() != f.name:
            torn += 1
    ms, rs = states[f"model:{model}"], states.get(f"req:{request}:{model}")
    if rs and rs.get("state") == "applied":
        consistent = ms["digest"] == rs["new"] and ms["version"] == rs["version"]
    else:
        consistent = rs is None or "base" not in rs or ms["digest"] == rs["base"]
    blob_ok = all(_blob_ok(home, d) for d in version_blobs(states, ms["digest"]))
    return {"digest": ms["digest"], "consistent": consistent, "blob_ok": blob_ok, "torn": torn,
            "temp": temp, "states": states}


class KillLoop:
    """Two peers: alice owns g (il's root), bob owns a (g -> a); for labels 0-5 both are discovery
    nodes and both apply, bob after pulling g's Fisher from alice. Requests are made one at a time
    (each a fresh id, so each is applied anew). Kills land at failpoints (armed when a peer
    restarts) or on either peer at random moments."""

    def __init__(self, cluster: PeerCluster, owners: dict[str, Peer], rng: random.Random) -> None:
        self.c, self.rng = cluster, rng
        self.model_of = {p.name: m for m, p in owners.items()}
        self.alice, self.bob = owners["g"], owners["a"]
        self.s = Summary()
        self.current = ""
        self.log_offset: dict[str, int] = {}
        self.queue: list[str] = []
        self.cycles = 0

    def other(self, peer: Peer) -> Peer:
        return self.alice if peer is self.bob else self.bob

    def _admin(self, call: str, request, peers: list[Peer] | None = None):
        for p in peers or [self.alice, self.bob]:
            if p.proc is not None and p.proc.poll() is None and p.grpc:
                try:
                    return getattr(p.admin, call)(request, timeout=30)
                except grpc.RpcError:
                    continue
        return None

    def done(self, rid: str, peers: list[Peer] | None = None) -> bool:
        r = self._admin("GetRequest", admin_pb2.GetRequestRequest(request_id=rid), peers)
        return bool(r and r.done)

    def issue(self) -> None:
        rid = f"crash-{len(self.s.requests):03d}"
        label = LABELS[len(self.s.requests) % len(LABELS)]
        live = [p for p in (self.alice, self.bob) if self.alive(p)]
        first = self.rng.choice(live)
        # An armed peer can die at its failpoint while it takes the request; the request is
        # idempotent by id, so the other peer takes it again (what a user would do).
        for p in [first] + [p for p in live if p is not first]:
            try:
                reply = p.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
                    forget_labels=[label], request_id=rid), timeout=60)
                break
            except grpc.RpcError as exc:
                if self.alive(p) and exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
        else:
            raise RuntimeError(f"no live peer took request {rid}")
        assert set(reply.affected_models) == {"g", "a"}
        self.s.requests.append(rid)
        self.current = rid

    def start(self, peer: Peer, arm: dict[str, str]) -> bool:
        """(Re)start ``peer`` with failpoints ``arm``; False when it was killed while starting."""
        peer.env = {faults.ENV: ";".join(f"{k}={v}" for k, v in {**SLEEPS, **arm}.items())}
        log = peer.home / "peer.log"
        self.log_offset[peer.name] = log.stat().st_size if log.exists() else 0
        self.c.start(peer, bootstrap=self.other(peer).p2p)
        deadline = time.monotonic() + self.c.startup_timeout
        while time.monotonic() < deadline:
            if peer.proc.poll() is not None:
                return False
            if (peer.home / "run.json").exists():
                self.c.wait_ready(peer)
                return True
            time.sleep(0.05)
        raise TimeoutError(f"{peer.name} did not start:\n{self.c.log_tail(peer)}")

    def record_kill(self, peer: Peer, how: str, target: str = "random") -> None:
        rc = peer.proc.wait(timeout=30)
        assert rc == -9, f"{peer.name} exited with {rc}, not by SIGKILL:\n{self.c.log_tail(peer)}"
        peer.close_channel()
        detail = ""
        if how != "random":
            text = (peer.home / "peer.log").read_bytes()[self.log_offset[peer.name]:].decode(errors="replace")
            fired = FIRED.findall(text)
            assert fired, f"{peer.name} was killed but no failpoint says so:\n{text[-2000:]}"
            (name, detail), started = fired[-1], how != "startup"
            how = name if started else f"{name}(startup)"
        m = self.model_of[peer.name]
        st = inspect_store(peer.home, m, self.current)
        self.s.kills.append(Kill(peer.name, m, self.current, target, how, detail, st["digest"], st["consistent"],
                                 st["blob_ok"], st["torn"], st["temp"]))

    def arm_point(self) -> tuple[str, dict[str, str]]:
        """The next target, round robin over TARGETS in a shuffled order (a target that was not
        reached goes back in the queue)."""
        if not self.queue:
            self.queue = self.rng.sample(TARGETS, len(TARGETS))
        target = self.queue.pop(0)
        if target in STORE_TARGETS:
            n = self.rng.randrange(40 if target == "before_commit" else 4)
            name, _, spec = STORE_TARGETS[target].format(n=n).partition("=")
            return target, {name: spec}
        return target, {target: "kill"}

    def ensure_request(self) -> None:
        if not self.current or self.done(self.current):
            self.issue()

    def uncovered(self) -> set[str]:
        """Targets no kill has landed on yet (the aimed store points count once they fired)."""
        return set(TARGETS) - {k.target for k in self.s.kills if k.how != "random"}

    def alive(self, peer: Peer) -> bool:
        return peer.proc is not None and peer.proc.poll() is None

    def cycle(self) -> None:
        """One kill, one restart: the peer killed last comes back either armed at a random
        failpoint (and we wait for it to die there), or plain, and then one of the two peers is
        SIGKILLed from outside after a random delay."""
        self.cycles += 1
        dead = [p for p in (self.alice, self.bob) if not self.alive(p)]
        if dead and self.cycles % 3:   # two kills in three at a failpoint, one at a random moment
            victim = dead[0]
            target, arm = self.arm_point()
            if not self.start(victim, arm):
                self.record_kill(victim, "startup", target)
                return
            self.ensure_request()
            issued = 0
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if not self.alive(victim):
                    self.record_kill(victim, "point", target)
                    return
                if self.done(self.current, [self.other(victim)]):
                    if issued == 2:           # the armed step did not come up: move on, unkilled
                        self.s.not_reached += 1
                        self.queue.append(target)
                        return
                    self.issue()
                    issued += 1
                time.sleep(0.1)
            raise TimeoutError(f"request {self.current} stuck:\n{self.c.log_tail(victim)}")
        for p in dead:
            assert self.start(p, {}), "a plain restart cannot be killed by a failpoint"
        self.ensure_request()
        victim = self.rng.choice([self.alice, self.bob])
        time.sleep(self.rng.uniform(0.0, 2.5))
        for p in (self.alice, self.bob):
            if not self.alive(p):             # a still-armed peer died at its failpoint meanwhile
                self.record_kill(p, "point", "armed earlier")
                return
        os.kill(victim.proc.pid, signal.SIGKILL)
        self.record_kill(victim, "random")

    def finish(self, timeout: float = 300.0) -> None:
        for p in (self.alice, self.bob):
            if p.proc is None or p.proc.poll() is not None:
                assert self.start(p, {})
        for p in (self.alice, self.bob):
            self.c.wait_request(p, self.current, timeout=timeout)


def run_kill_loop(root: Path, n_kills: int, seed: int) -> Summary:
    t0 = time.monotonic()
    stage = prepare(SimConfig(framework="il", model="mlp", seed=0))
    rng = random.Random(seed)
    # Generous timeouts: on a loaded 2-core machine a restart can take a minute.
    with PeerCluster(root, ["alice", "bob"], sync_interval=1.0, startup_timeout=300) as cluster:
        alice, bob = cluster.peers
        owners = {"g": alice, "a": bob}
        publish_stage(stage, owners)
        cluster.wait_lineage(alice, 2)
        loop = KillLoop(cluster, owners, rng)
        loop.issue()
        while len(loop.s.kills) < n_kills or (loop.uncovered() and len(loop.s.kills) < 2 * n_kills):
            loop.cycle()
        loop.finish()
        envelopes = converged_records(cluster.peers)
    summary = loop.s
    summary.seconds = time.monotonic() - t0
    check_exactly_once(summary, envelopes, owners)
    return summary


def check_exactly_once(s: Summary, envelopes: dict[str, list[bytes]], owners: dict[str, Peer]) -> None:
    """Every request applied once per model, one receipt and one lineage version each, the same
    records on both peers, and every state seen after a kill was the old or the new version."""
    ids = {name: {parse_record(e).record_id for e in envs} for name, envs in envelopes.items()}
    assert ids["alice"] == ids["bob"], "the peers ended with different records"
    recs = [parse_record(e) for e in envelopes["alice"]]
    receipts = Counter((r.predicate["request_id"], r.predicate["model_id"]) for r in recs if r.kind == "receipt")
    expected = {(rid, m) for rid in s.requests for m in owners}
    assert set(receipts) == expected, "a request was not applied by every affected model"
    assert max(receipts.values()) == 1, f"duplicate receipts: {[k for k, n in receipts.items() if n > 1]}"
    by_pair = {(r.predicate["request_id"], r.predicate["model_id"]): r.predicate for r in recs
               if r.kind == "receipt"}
    heads: dict[str, str] = {}     # a new version's digest -> its head blob (what unlearning writes)
    for m, peer in owners.items():
        versions = sorted((r.predicate["version"], r.subject_digest, r.predicate["previous_digest"])
                          for r in recs if r.kind == "lineage" and r.predicate["model_id"] == m)
        assert [v for v, _, _ in versions] == list(range(1, len(s.requests) + 2)), f"{m}: {versions}"
        for (_, prev_digest, _), (_, _, previous) in zip(versions, versions[1:], strict=False):
            assert previous == prev_digest, f"{m}: the version chain is broken"
        assert not list((peer.home / "blobs").glob("*/.*.tmp")), "temp files survived a restart"
        with Store(peer.home) as store:       # the final state, after a clean stop
            ms = store.get_state(f"model:{m}")
            assert ms["version"] == len(s.requests) + 1 and ms["digest"] == versions[-1][1]
            assert all(store.verify_blob(d) for d in version_blobs(store.states("ver:"), ms["digest"]))
            heads |= {k.removeprefix("ver:"): v["head"] for k, v in store.states("ver:").items()}
            applied = [store.get_state(f"req:{rid}:{m}") for rid in s.requests]
            assert all(st["state"] == "applied" for st in applied)
            assert sorted(st["version"] for st in applied) == list(range(2, len(s.requests) + 2))
    for k in s.kills:
        assert k.consistent, f"model and request state disagree after a kill: {k}"
        assert k.blob_ok and k.torn_blobs == 0, f"a torn blob after a kill: {k}"
        receipt = by_pair[(k.request, k.model)]
        k.verdict = {receipt["old_digest"]: "old", receipt["new_digest"]: "new"}.get(k.state_digest, "torn")
        if k.how in ("mid_write", "before_rename") and k.detail in (receipt["new_digest"],
                                                                   heads.get(receipt["new_digest"])):
            k.how = f"{k.how}(new model)"
    assert all(k.verdict in ("old", "new") for k in s.kills), [k for k in s.kills if k.verdict == "torn"]


def test_kill_loop_20_kills(tmp_path):
    summary = run_kill_loop(tmp_path, 20, seed=0)
    print(summary.line())
    assert len(summary.kills) >= 20
    fired = {k.how for k in summary.kills}
    # Every step was crashed at least once, the new model's blob write among them.
    assert set(AGENT_POINTS) <= fired, set(AGENT_POINTS) - fired
    assert {"mid_write(new model)", "before_rename(new model)", "before_commit"} <= fired, fired


@pytest.mark.slow
def test_kill_loop_100_kills(tmp_path):
    summary = run_kill_loop(tmp_path, 100, seed=1)
    print(summary.line())
    assert len(summary.kills) >= 100
