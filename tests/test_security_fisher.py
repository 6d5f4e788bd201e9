"""Bad tensors: an announced Fisher of the wrong shape, dtype or keys for the receiver's head, with
NaN/Inf or negative entries, or whose bytes do not hash to the announced digest, is refused before
any arithmetic with a clear "why pending"; the model stays untouched; a good provider is used when
one has the blob, and a bad announcement does not hold up other requests."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from security_support import AgentHost

from fiun_peer import records as R
from fiun_peer.agent import ParentRef
from fiun_peer.identity import Identity
from fiun_peer.models import build_model
from fiun_peer.rpc.fisher_service import FisherServicer, fetch_blob
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.rpc.server import make_server
from fiun_peer.store import Store
from fiun_peer.tensors import to_bytes
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.peers import PeerCluster

ALICE = Identity.from_seed(bytes([2]) * 32, "alice")   # owns g, the discovery model
ARCH = {"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10}
GOOD = {"weight": torch.rand(10, 128), "bias": torch.rand(10)}   # a's head: Linear(128, 10)


def bad(kind: str) -> dict[str, torch.Tensor]:
    f = {k: v.clone() for k, v in GOOD.items()}
    if kind == "shape":
        return {"weight": torch.rand(5, 128), "bias": torch.rand(5)}
    if kind == "dtype":
        return {k: v.double() for k, v in f.items()}
    if kind == "keys":
        return {"weight": f["weight"]}
    f["weight"][3, 7] = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0}[kind]
    return f


EXPECTED = {"shape": "bias has shape [5], this model's head needs [10]",
            "dtype": "has dtype torch.float64, this model's head needs torch.float32",
            "keys": "do not match this model's head", "nan": "NaN or Inf", "inf": "NaN or Inf",
            "negative": "negative entries"}


class Provider:
    """A peer that serves blobs (a real FisherService on loopback) from its own store."""

    def __init__(self, home: Path) -> None:
        self.store = Store(home)
        self.server, port = make_server("127.0.0.1:0", FisherServicer(self.store))
        self.server.start()
        self.target = f"127.0.0.1:{port}"

    def close(self) -> None:
        self.server.stop(grace=None)
        self.store.close()


def _announce(host: AgentHost, rid: str, fisher: dict[str, torch.Tensor], providers: list[Provider]) -> str:
    blob = to_bytes(fisher)
    digest = hashlib.sha256(blob).hexdigest()
    req = R.build_request(ALICE, request_id=rid, forget_labels=[3], created_at=1.0)
    ann = R.build_announcement(ALICE, request_id=rid, model_id="g", model_digest="1" * 64, fisher_digest=digest,
                               shapes={k: list(v.shape) for k, v in fisher.items()}, estimator="empirical",
                               labels=[3])
    for p in providers:  # a provider serves a Fisher that an announcement it holds names
        p.store.put_blob(blob, kind="fisher")
        p.store.add_record(ann)
    for rec in (req, ann):
        assert host.call(host.agent.ingest, rec.envelope, source="test")[2] == "accepted"
    return digest


def _why(host: AgentHost, rid: str, until, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        _, progress, _ = host.call(host.agent.request_progress, rid)
        a = {p.model_id: p for p in progress}["a"]
        why = a.why_pending if a.state != "applied" else "applied"
        if until(why):
            return why
        time.sleep(0.1)
    raise AssertionError(f"timed out; last why_pending of a: {why!r}")


@pytest.fixture
def network(tmp_path: Path):
    providers = [Provider(tmp_path / "p1"), Provider(tmp_path / "p2")]
    with AgentHost(tmp_path / "me", fetch_blob=lambda target, digest: fetch_blob(target, digest, timeout=30)) as host:
        g = R.build_lineage(ALICE, model_id="g", model_digest="1" * 64, version=1, parents=[], relation="root",
                            labels=[0, 1, 2, 3, 4], head_tensors=["head.weight", "head.bias"], architecture=ARCH,
                            model_fisher_digests={})
        assert host.call(host.agent.ingest, g.envelope, source="test")[2] == "accepted"
        model = build_model("mlp", (1, 8, 8), 10, seed=1)
        y = torch.arange(5, 10).repeat(8)
        data = to_bytes({"x": torch.rand(len(y), 1, 8, 8), "y": y})
        host.acall(host.agent.publish_model, model_id="a", weights=to_bytes(model.state_dict()), data=data,
                   parents=[ParentRef("g", "finetune")], labels=[], architecture=ARCH, head_tensors=[])
        # Alice (the announcer) is reached at p1 first, another peer at p2.
        host.call(host.agent.book.peers.update, {ALICE.public_key_hex: providers[0].target, "b" * 64: providers[1].target})
        yield host, providers
    for p in providers:
        p.close()


def test_bad_fishers_are_refused_before_apply_and_do_not_block_a_good_request(network) -> None:
    host, providers = network
    original = host.call(host.store.get_state, "model:a")["digest"]
    for kind in EXPECTED:
        _announce(host, f"bad-{kind}", bad(kind), providers)
    for kind, text in EXPECTED.items():
        why = _why(host, f"bad-{kind}", lambda w, text=text: text in w)
        assert "Fisher of g" in why and "unusable" in why and "left untouched" in why, why
    assert host.call(host.store.get_state, "model:a")["digest"] == original     # nothing applied
    counters = host.call(host.store.counters)
    assert counters["fisher_invalid"] == len(EXPECTED) and "apply_failed" not in counters
    assert host.call(host.store.record_count, "receipt") == 0

    # A digest mismatch at the announcer (p1 serves damaged bytes); p2 holds the right blob.
    digest = _announce(host, "good", GOOD, providers)
    providers[0].store.blob_path(digest).write_bytes(b"damaged")
    assert _why(host, "good", lambda w: w == "applied") == "applied"
    counters = host.call(host.store.counters)
    assert counters["fisher_fetch_failed"] >= 1                                   # p1 tried and refused
    assert host.call(host.store.get_state, "model:a")["digest"] != original
    # The bad requests still say why, they did not wedge the good one.
    assert "NaN or Inf" in _why(host, "bad-nan", lambda w: "NaN" in w)


def test_an_unusable_fisher_is_counted_once_with_one_reason(network) -> None:
    """NaN in both tensors: the reason names the first tensor in sorted order on every pass (it
    alternated with safetensors' order), and fisher_invalid counts once per (request, model, Fisher),
    however many reconcile passes see it."""
    host, providers = network
    both = {"weight": torch.full((10, 128), float("nan")), "bias": torch.full((10,), float("nan"))}
    _announce(host, "nan-1", both, providers)
    first = _why(host, "nan-1", lambda w: "NaN" in w)
    assert "Fisher['bias'] holds NaN or Inf" in first, first
    whys = set()
    for _ in range(8):
        host.acall(host.agent.reconcile)
        _, progress, _ = host.call(host.agent.request_progress, "nan-1")
        whys.add({p.model_id: p for p in progress}["a"].why_pending)
    assert whys == {first}
    assert host.call(host.store.counters)["fisher_invalid"] == 1
    _announce(host, "nan-2", both, providers)                  # the same blob in another request: counted
    _why(host, "nan-2", lambda w: "NaN" in w)
    for _ in range(3):
        host.acall(host.agent.reconcile)
    assert host.call(host.store.counters)["fisher_invalid"] == 2


def test_digest_mismatch_everywhere_reports_and_recovers_when_a_good_copy_appears(network) -> None:
    host, providers = network
    original = host.call(host.store.get_state, "model:a")["digest"]
    digest = _announce(host, "r", GOOD, providers)
    for p in providers:
        p.store.blob_path(digest).write_bytes(b"not the announced fisher")
    why = _why(host, "r", lambda w: "could not fetch Fisher of g" in w)
    assert why.count("digest mismatch") == 2, why                  # both providers tried, both refused
    assert host.call(host.store.get_state, "model:a")["digest"] == original
    providers[1].store.blob_path(digest).write_bytes(to_bytes(GOOD))   # a good source appears
    assert _why(host, "r", lambda w: w == "applied") == "applied"


@pytest.mark.slow  # the same path as above, with real processes (tests/test_e2e_hostile.py covers the report)
def test_real_peer_reports_a_corrupt_fisher_then_recovers(tmp_path: Path) -> None:
    """Real processes: bob pulls g's Fisher from alice, whose copy is damaged on disk; he says so in
    GetRequest, and applies as soon as alice serves the right bytes again."""
    stage = prepare(SimConfig(framework="il", model="mlp", seed=0))
    with PeerCluster(tmp_path, ["alice", "bob"]) as cluster:
        alice, bob = cluster.peers
        publish_stage(stage, {"g": alice, "a": bob})
        cluster.wait_lineage(bob, 2)
        cluster.stop(bob)                                       # so alice's announcement waits for him
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[3], request_id="r1"),
                                      timeout=30)
        digest = _wait_announcement(alice)
        blob = alice.home / "blobs" / digest[:2] / digest
        good = blob.read_bytes()
        blob.write_bytes(b"damaged" * 10)
        cluster.start(bob, bootstrap=alice.p2p)
        cluster.wait_ready(bob)
        why = _peer_why(bob, lambda w: "could not fetch Fisher of g" in w)
        assert "digest mismatch" in why, why
        blob.write_bytes(good)
        done = cluster.wait_request(bob, "r1", timeout=120)
        a = {m.model_id: m for m in done.models}["a"]
        assert a.state == "applied" and a.old_digest != a.new_digest


def _wait_announcement(peer, timeout: float = 60.0) -> str:
    from fiun_peer.rpc.record_service import sync_records

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for env in sync_records(peer.grpc, []):
            r = R.parse_record(env)
            if r.kind == "announcement":
                return r.predicate["fisher_digest"]
        time.sleep(0.2)
    raise AssertionError("no announcement")


def _peer_why(peer, until, timeout: float = 90.0) -> str:
    import grpc

    deadline = time.monotonic() + timeout
    why = ""
    while time.monotonic() < deadline:
        try:
            r = peer.admin.GetRequest(admin_pb2.GetRequestRequest(request_id="r1"), timeout=10)
            why = {m.model_id: m for m in r.models}["a"].why_pending
            if until(why):
                return why
        except (grpc.RpcError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out; last why: {json.dumps(why)}")
