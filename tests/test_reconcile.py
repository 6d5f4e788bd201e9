"""The agent's reconcile pass skips (request, own model) pairs with nothing left to do."""
from __future__ import annotations

from pathlib import Path

import pytest
import trio
from record_support import d, lineage

from fiun_peer import records as R
from fiun_peer.agent import Agent
from fiun_peer.identity import Identity
from fiun_peer.store import Store

ME, OTHER = Identity.from_seed(b"\x21" * 32, "me"), Identity.from_seed(b"\x22" * 32, "other")


@pytest.fixture
def agent(tmp_path: Path):
    """Ours: m0 (label 0, a root) and m2 (label 2, fine-tuned from m1); m1 (label 1) is OTHER's."""
    store = Store(tmp_path)
    a = Agent(ME, store, publish=None, fetch_blob=None)
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
        a = Agent(ME, store, publish=None, fetch_blob=None)
        for rec in (lineage(ME, "m0", [0]), lineage(OTHER, "m1", [1])):
            assert a.ingest(rec.envelope, source="test")[2] == "accepted"
            trio.run(a.reconcile)
            assert a._view is None
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
    # As the apply step leaves it (fiun_peer.agent.Agent._apply), the receipt not yet sent: a crash.
    new = d("m2-v2")
    agent.store.put_state("req:r9:m2", {"state": "applied", "old": d("m2-v1"), "new": new, "version": 2})
    agent.store.put_state("model:m2", {"digest": new, "version": 2})
    sent: list[R.Record] = []

    async def publish(envelope: bytes, push_to, gossip) -> None:
        sent.append(R.parse_record(envelope))
    agent._publish = publish
    trio.run(agent.reconcile)
    assert [r.kind for r in sent] == ["lineage", "receipt"]   # the missing receipt goes out once
    reads = _state_reads(agent, monkeypatch)
    trio.run(agent.reconcile)
    trio.run(agent.reconcile)
    assert [r.kind for r in sent] == ["lineage", "receipt"]
    assert not [k for k in reads if k.startswith("req:r9:")]
