"""The agent's reconcile pass skips (request, own model) pairs with nothing left to do."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio
from record_support import CallPublisher, d, lineage

from fiun_peer import records as R
from fiun_peer.agent import Agent
from fiun_peer.identity import Identity
from fiun_peer.store import Store

ME, OTHER = Identity.from_seed(b"\x21" * 32, "me"), Identity.from_seed(b"\x22" * 32, "other")


@pytest.fixture
def agent(tmp_path: Path):
    """Ours: m0 (label 0, a root) and m2 (label 2, fine-tuned from m1); m1 (label 1) is OTHER's."""
    store = Store(tmp_path)
    a = Agent(ME, store)
    for rec in (lineage(ME, "m0", [0]), lineage(OTHER, "m1", [1]), lineage(ME, "m2", [2], ("m1",))):
        assert a.ingest(rec.envelope, source="test")[2] == "accepted"
    for m in ("m0", "m2"):
        store.put_state(f"model:{m}", {"digest": d(f"{m}-v1"), "version": 1})
    yield a
    store.close()


def _state_reads(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real = agent.store.get_state

    def counting(key: str):
        reads.append(key)
        return real(key)
    monkeypatch.setattr(agent.store, "get_state", counting)
    return reads


def test_a_pass_with_no_request_leaves_the_lineage_view_unbuilt(tmp_path: Path) -> None:
    # Every new model drops the view; a pass that rebuilt it for nothing made each of 64 arriving
    # lineage records cost a full rebuild (bench: reconcile CPU 11 ms -> 128 ms for 64 records).
    with Store(tmp_path) as store:
        a = Agent(ME, store)
        for rec in (lineage(ME, "m0", [0]), lineage(OTHER, "m1", [1])):
            assert a.ingest(rec.envelope, source="test")[2] == "accepted"
            trio.run(a.reconcile)
            assert a.ledger._view is None
        assert a.view.owned_by(ME.public_key_hex) == ["m0"]


def test_requests_outside_a_models_subgraph_are_looked_at_once(agent: Agent, monkeypatch) -> None:
    # Label 1 is held by m1 (not ours): m0 is outside its sub-graph, m2 inherits it and waits for m1's
    # Fisher. Label 5 is held by nobody: neither of our models is affected.
    for i, labels in enumerate([[1], [5], [5]]):
        rec = R.build_request(OTHER, request_id=f"r{i}", forget_labels=labels, settings={})
        assert agent.ingest(rec.envelope, source="test")[2] == "accepted"
    reads = _state_reads(agent, monkeypatch)
    trio.run(agent.reconcile)
    first = {k for k in reads if k.startswith("req:")}
    assert first == {f"req:r{i}:{m}" for i in range(3) for m in ("m0", "m2")}
    assert "waiting for Fisher announcements from m1" in agent.store.get_state("req:r0:m2")["why"]
    reads.clear()
    trio.run(agent.reconcile)
    # Only the pending pair is looked at again; the five that can never concern us are skipped.
    assert {k for k in reads if k.startswith("req:")} == {"req:r0:m2"}


def test_an_applied_request_is_settled_once_its_receipt_is_ours(agent: Agent, monkeypatch) -> None:
    rec = R.build_request(OTHER, request_id="r9", forget_labels=[2], settings={})
    assert agent.ingest(rec.envelope, source="test")[2] == "accepted"
    # As the apply step leaves it (fiun_peer.reconcile.Reconciler._apply), the receipt not yet sent: a crash.
    new = d("m2-v2")
    agent.store.put_state("req:r9:m2", {"state": "applied", "old": d("m2-v1"), "new": new, "version": 2})
    agent.store.put_state("model:m2", {"digest": new, "version": 2})
    sent: list[R.Record] = []

    async def publish(envelope: bytes, push_to, gossip) -> None:
        sent.append(R.parse_record(envelope))
    agent.publisher = CallPublisher(publish)
    trio.run(agent.reconcile)
    assert [r.kind for r in sent] == ["lineage", "receipt"]   # the missing receipt goes out once
    reads = _state_reads(agent, monkeypatch)
    trio.run(agent.reconcile)
    trio.run(agent.reconcile)
    assert [r.kind for r in sent] == ["lineage", "receipt"]
    assert not [k for k in reads if k.startswith("req:r9:")]


def _m3_from_m1_v2(agent: Agent) -> list[R.Record]:
    """Request r1 forgets label 1 (m1's); m1 applied it (v2), and our m3 was then derived from m1 v2.
    Returns the list our records are "sent" to."""
    rec = R.build_request(OTHER, request_id="r1", forget_labels=[1], settings={})
    assert agent.ingest(rec.envelope, source="test")[2] == "accepted"
    m1_receipt = R.build_receipt(OTHER, request_id="r1", model_id="m1", old_digest=d("m1-v1"), new_digest=d("m1-v2"))
    assert agent.ingest(m1_receipt.envelope, source="test")[2] == "accepted"
    assert agent.ingest(lineage(ME, "m3", [3], ("m1",), parent_versions={"m1": 2}).envelope, source="test")[2] \
        == "accepted"
    agent.store.put_state("model:m3", {"digest": d("m3-v1"), "version": 1})
    sent: list[R.Record] = []

    async def publish(envelope: bytes, push_to, gossip) -> None:
        sent.append(R.parse_record(envelope))
    agent.publisher = CallPublisher(publish)
    return sent


def test_a_model_outside_a_request_says_so_once_and_is_settled(agent: Agent, monkeypatch) -> None:
    """Issue 18's latent path: a model that descends from the data to forget by the graph's shape,
    but only through a parent version that had applied the request already, was neither applied nor
    settled nor receipted, so the requester saw it pending for ever. Now its owner signs one
    not_affected receipt with the reason, and the pair is settled."""
    sent = _m3_from_m1_v2(agent)
    trio.run(agent.reconcile)
    (spared,) = [r for r in sent if r.kind == "receipt"]     # m2 (from m1 v1) waits for m1's Fisher
    p = spared.predicate
    assert (p["model_id"], R.receipt_state(p), p["old_digest"], p["new_digest"]) == \
        ("m3", "not_affected", d("m3-v1"), d("m3-v1"))
    assert f"m1 v2 ({d('m1-v2')[:12]})" in p["reason"] and "none of [1]" in p["reason"]
    assert agent.store.has_record(spared.record_id)          # our own peer accepted it too
    assert agent.store.get_state("req:r1:m3")["state"] == "not_affected"
    assert ("r1", "m3") in agent.reconciler._settled and ("r1", "m2") not in agent.reconciler._settled
    by = {x.model_id: x for x in agent.request_progress("r1")[1]}
    assert (by["m3"].state, by["m3"].reason, by["m2"].state) == ("not_affected", p["reason"], "pending")
    reads = _state_reads(agent, monkeypatch)
    trio.run(agent.reconcile)
    assert len([r for r in sent if r.kind == "receipt"]) == 1 and "req:r1:m3" not in reads


def test_a_not_affected_receipt_lost_in_a_crash_goes_out_after_restart(agent: Agent) -> None:
    sent = _m3_from_m1_v2(agent)
    # As _not_affected leaves it when the process dies before the receipt is out: the state, no receipt.
    agent.store.put_state("req:r1:m3", {"state": "not_affected", "old": d("m3-v1"), "new": d("m3-v1"),
                                        "reason": "derived from m1 v2"})
    trio.run(agent.reconcile)
    trio.run(agent.reconcile)
    receipts = [r for r in sent if r.kind == "receipt"]
    assert [(r.predicate["model_id"], R.receipt_state(r.predicate), r.predicate["reason"]) for r in receipts] == \
        [("m3", "not_affected", "derived from m1 v2")]
    assert agent.store.has_record(receipts[0].record_id)


def test_the_reason_of_an_aggregate_of_many_clean_parents_fits_a_receipt(agent: Agent) -> None:
    rec = R.build_request(OTHER, request_id="r1", forget_labels=[1], settings={})
    agent.ingest(rec.envelope, source="test")
    parents = tuple(f"p{i:03d}-" + "x" * 100 for i in range(12))
    for p in parents:
        assert agent.ingest(lineage(OTHER, p, [1]).envelope, source="test")[2] == "accepted"
        receipt = R.build_receipt(OTHER, request_id="r1", model_id=p, old_digest=d(f"{p}-v1"), new_digest=d(f"{p}-v2"))
        assert agent.ingest(receipt.envelope, source="test")[2] == "accepted"
    agg = lineage(ME, "agg", [5], parents, parent_versions=dict.fromkeys(parents, 2))
    assert agent.ingest(agg.envelope, source="test")[2] == "accepted"
    agent.store.put_state("model:agg", {"digest": d("agg-v1"), "version": 1})
    sent = []

    async def publish(envelope: bytes, push_to, gossip) -> None:
        sent.append(R.parse_record(envelope))
    agent.publisher = CallPublisher(publish)
    trio.run(agent.reconcile)
    (spared,) = [r for r in sent if r.kind == "receipt" and r.predicate["model_id"] == "agg"]
    assert len(spared.predicate["reason"]) == R.MAX_REASON and spared.predicate["reason"].endswith("...")
    assert agent.store.has_record(spared.record_id) and ("r1", "agg") in agent.reconciler._settled
