"""Offline and late peers, on real peer processes: a peer that is offline when a request is made
catches up and applies it when it returns; a discovery peer that is offline when the requests arrive
announces its Fishers after it returns; meanwhile ``GetRequest`` on the other peer says which model
is pending, whose it is, and why. Each request ends applied exactly once per model, and requests
that were pending together build on each other's versions (none is lost)."""

from __future__ import annotations

import time
from collections import Counter

import grpc
import pytest

from fiun_peer.records import parse_record
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.peers import Peer, PeerCluster, converged_records

FORGET = 3   # held by g only: g is the discovery node, a (published without it) inherits


@pytest.fixture(scope="module")
def stage():
    return prepare(SimConfig(framework="il", model="mlp", seed=0))


def _progress(peer: Peer, rid: str) -> dict[str, admin_pb2.ModelProgress]:
    reply = peer.admin.GetRequest(admin_pb2.GetRequestRequest(request_id=rid), timeout=30)
    return {m.model_id: m for m in reply.models}


def _wait_progress(peer: Peer, rid: str, pred, what: str, timeout: float = 300.0) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = _progress(peer, rid)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if pred(last):
                return last
        time.sleep(0.3)
    raise AssertionError(f"{peer.name}: {what} not seen after {timeout}s; last progress: {last}")


def test_offline_peers_catch_up_and_pending_says_why(stage, tmp_path):
    with PeerCluster(tmp_path, ["alice", "bob"], sync_interval=1.0, startup_timeout=300) as c:
        alice, bob = c.peers
        keys = {p.name: p.admin.Status(admin_pb2.StatusRequest(), timeout=10).public_key for p in c.peers}
        publish_stage(stage, {"g": alice})
        c.wait_lineage(bob, 1)
        publish_stage(stage, {"a": bob}, exclude_labels={"a": [FORGET]})
        c.wait_lineage(alice, 2)

        # 1. Bob (inherited model a) is offline when the request is made on alice.
        c.stop(bob)
        reply = alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
            forget_labels=[FORGET], request_id="while-bob-away"), timeout=30)
        assert set(reply.affected_models) == {"g", "a"} and list(reply.discovery_models) == ["g"]
        # "offline" once a call to bob has failed (watching the request makes alice try him at
        # once); a peer heard from moments ago is not called offline before that.
        p = _wait_progress(alice, "while-bob-away", lambda p: p["g"].state == "applied"
                           and "offline" in p["a"].why_pending, "g applied, bob offline")
        assert p["a"].state == "pending"
        why = p["a"].why_pending
        assert "a (owner " in why and keys["bob"][:12] in why and "offline" in why and "receipt" in why, why
        print(f"why pending (a, its peer offline): {why}")
        c.start(bob, bootstrap=alice.p2p)
        c.wait_ready(bob)
        for peer in (bob, alice):           # bob catches up: pulls g's Fisher, applies, receipts
            c.wait_request(peer, "while-bob-away", timeout=300)

        # 2. Alice (discovery model g) is offline when the requests arrive, made on bob. Two of them:
        # both wait on alice, and once she is back the second must build on the first's version.
        c.stop(alice)
        for rid, label in (("while-alice-away", FORGET), ("also-while-alice-away", 4)):
            bob.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(
                forget_labels=[label], request_id=rid), timeout=60)
        p = _wait_progress(bob, "while-alice-away", lambda p: "waiting for Fisher announcements from g"
                           in p["a"].why_pending and "offline" in p["a"].why_pending, "a waiting for g, offline")
        for m in ("g", "a"):                 # both wait on g's owner, and say who that is
            assert p[m].state == "pending"
            why = p[m].why_pending
            assert "from g (owner " in why and keys["alice"][:12] in why and "offline" in why, why
            print(f"why pending ({m}, discovery peer offline): {why}")
        time.sleep(3)                        # a few sync rounds: nothing moves without alice
        p = _progress(bob, "while-alice-away")
        assert p["g"].state == p["a"].state == "pending"
        c.start(alice, bootstrap=bob.p2p)
        c.wait_ready(alice)
        for peer in (alice, bob):            # alice announces late; bob pulls and applies
            for rid in ("while-alice-away", "also-while-alice-away"):
                done = c.wait_request(peer, rid, timeout=300)
                assert all(m.state == "applied" for m in done.models)

        # Exactly once, and the same records on both peers.
        recs = {name: [parse_record(e) for e in envs] for name, envs in converged_records(c.peers).items()}
        assert {r.record_id for r in recs["alice"]} == {r.record_id for r in recs["bob"]}
        receipts = Counter((r.predicate["request_id"], r.predicate["model_id"]) for r in recs["alice"]
                           if r.kind == "receipt")
        rids = ("while-bob-away", "while-alice-away", "also-while-alice-away")
        assert receipts == {(rid, m): 1 for rid in rids for m in ("g", "a")}
        for m in ("g", "a"):
            chain = sorted((r.predicate["version"], r.subject_digest, r.predicate["previous_digest"])
                           for r in recs["alice"] if r.kind == "lineage" and r.predicate["model_id"] == m)
            assert [v for v, _, _ in chain] == [1, 2, 3, 4], (m, chain)
            for (_, digest, _), (_, _, previous) in zip(chain, chain[1:], strict=False):
                assert previous == digest, f"{m}: a version does not build on the one before (lost update)"
            olds = sorted(r.predicate["old_digest"] for r in recs["alice"]
                          if r.kind == "receipt" and r.predicate["model_id"] == m)
            assert olds == sorted(d for _, d, _ in chain[:-1]), f"{m}: receipts do not follow the chain"
