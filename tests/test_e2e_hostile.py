"""Bad input reaching a running peer: a tampered record and a Fisher blob whose bytes do not match
its digest are rejected, counted, and change nothing stored."""

from __future__ import annotations

import time

from fiun_peer.records import parse_record
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.rpc.record_service import push_record, sync_records
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.peers import PeerCluster


def test_tampered_record_and_bad_fisher_blob_are_rejected(tmp_path):
    stage = prepare(SimConfig(framework="il", model="mlp", seed=0))
    with PeerCluster(tmp_path, ["alice", "bob"]) as cluster:
        alice, bob = cluster.peers
        publish_stage(stage, {"g": alice, "a": bob})      # il: g -> a (b stays unpublished)
        cluster.wait_lineage(alice, 2)

        # 1. A tampered record: one byte of a valid envelope changed.
        env = bytearray(sync_records(alice.grpc, [])[0])
        env[len(env) // 2] ^= 0x01
        before = alice.admin.Status(admin_pb2.StatusRequest(), timeout=10)
        accepted, _, reason = push_record(alice.grpc, bytes(env))
        after = alice.admin.Status(admin_pb2.StatusRequest(), timeout=10)
        assert not accepted and reason in ("malformed", "bad_signature")
        assert after.records == before.records
        assert after.counters[f"rejected_{reason}"] == before.counters.get(f"rejected_{reason}", 0) + 1

        # 2. A Fisher blob that no longer matches its digest. Bob is offline while alice announces
        # g's Fisher; then alice's copy is corrupted on disk, and bob, back online, must pull it.
        cluster.stop(bob)
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[3], request_id="r1"),
                                      timeout=30)
        deadline = time.monotonic() + 60
        ann = None
        while ann is None and time.monotonic() < deadline:
            for e in sync_records(alice.grpc, []):
                r = parse_record(e)
                if r.kind == "announcement" and r.predicate["model_id"] == "g":
                    ann = r
            time.sleep(0.2)
        assert ann is not None
        digest = ann.predicate["fisher_digest"]
        blob = alice.home / "blobs" / digest[:2] / digest
        blob.write_bytes(b"not the announced fisher" * 10)   # alice now serves wrong bytes

        cluster.start(bob, bootstrap=alice.p2p)
        cluster.wait_ready(bob)
        why = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                r = bob.admin.GetRequest(admin_pb2.GetRequestRequest(request_id="r1"), timeout=10)
                why = {m.model_id: m for m in r.models}["a"].why_pending
                if "g" in why and "could not fetch" in why:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        assert "could not fetch Fisher of g" in why and "digest" in why.lower(), why
        status = bob.admin.Status(admin_pb2.StatusRequest(), timeout=10)
        assert status.counters["fisher_fetch_failed"] >= 1
        lineage = {m.model_id: m for m in bob.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models}
        assert lineage["a"].version == 1                       # bob's model untouched
        receipts = bob.admin.ListReceipts(admin_pb2.ListReceiptsRequest(request_id="r1"), timeout=10).receipts
        assert "a" not in {x.model_id for x in receipts}
