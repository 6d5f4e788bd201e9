"""The daemon's timing rules (fiun_peer.pacing) and the batched ingest of a Sync reply."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from record_support import lineage

from fiun_peer import faults
from fiun_peer import records as R
from fiun_peer.agent import Agent
from fiun_peer.identity import Identity
from fiun_peer.pacing import SyncPacer, with_retries
from fiun_peer.store import Store

OWNERS = [Identity.from_seed(bytes([i + 10]) * 32, f"o{i}") for i in range(3)]


def test_rounds_that_find_nothing_stretch_the_gap_up_to_the_backoff_and_a_find_resets_it() -> None:
    p = SyncPacer(2.0, 4)
    gaps = []
    for stored in [0, 0, 0, 0, 3, 0, 1]:
        gaps.append(p.gap())
        p.round_done(stored)
    assert gaps == [2.0, 4.0, 8.0, 8.0, 8.0, 2.0, 4.0]
    assert p.gap() == 2.0
    with pytest.raises(ValueError, match="sync interval"):
        SyncPacer(0.0, 4)


def test_a_push_is_retried_after_each_delay_until_it_succeeds_or_the_delays_run_out() -> None:
    calls, errors = [], []

    def failing(times: int):
        async def attempt() -> None:
            calls.append(trio.current_time())
            if len(calls) <= times:
                raise ConnectionError(f"down #{len(calls)}")
        return attempt

    async def main() -> tuple[bool, bool, list[float]]:
        ok = await with_retries(failing(2), (0.05, 0.1, 0.2), errors.append)
        took = [round(b - a, 6) for a, b in zip(calls, calls[1:], strict=False)]
        calls.clear()
        never = await with_retries(failing(99), (0.01, 0.01), errors.append)
        return ok, never, took

    # A virtual clock: the sleeps are the code's own, measured exactly, not the machine's timing.
    ok, never, took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ok and took == [0.05, 0.1]           # third try went through; no further sleep
    assert not never and len(calls) == 3        # two retries, then left to anti-entropy
    assert [str(e) for e in errors] == ["down #1", "down #2", "down #1", "down #2", "down #3"]


def _lineage(i: int) -> R.Record:
    return lineage(OWNERS[i], f"m{i}", [i])


@pytest.fixture
def agent(tmp_path: Path):
    store = Store(tmp_path)
    yield Agent(Identity.generate("me"), store)
    store.close()
    faults.configure("")


def test_a_sync_reply_is_stored_in_one_commit(agent: Agent) -> None:
    faults.configure("before_commit=off")       # active but harmless: it counts outer commits
    recs = [_lineage(i) for i in range(3)]
    assert agent.ingest_many([recs[0].envelope, b"not a record", recs[1].envelope, recs[0].envelope],
                             source="sync:test") == 2
    assert faults.hits("before_commit") == 1    # the whole batch, rejection counter included
    assert agent.store.counters()["rejected_malformed"] == 1
    assert sorted(agent.view.umig.models()) == ["m0", "m1"]
    before = faults.hits("before_commit")
    agent.ingest(recs[2].envelope, source="push")
    assert faults.hits("before_commit") == before + 1   # a single record: one commit, counter included
    assert agent.store.counters()["records_lineage"] == 3


def test_a_batch_that_fails_to_commit_leaves_nothing_and_the_view_follows_the_store(agent: Agent) -> None:
    first = _lineage(0)
    agent.ingest(first.envelope, source="push")
    assert agent.view.umig.models() == ["m0"]
    faults.configure("before_commit=raise")
    with pytest.raises(faults.FailpointFired):
        agent.ingest_many([_lineage(1).envelope, _lineage(2).envelope], source="sync:test")
    faults.configure("")
    assert agent.store.record_ids() == {first.record_id}
    assert agent.view.umig.models() == ["m0"]   # not the rolled-back m1, m2
    assert agent.ingest_many([_lineage(1).envelope, _lineage(2).envelope], source="sync:test") == 2
    assert sorted(agent.view.umig.models()) == ["m0", "m1", "m2"]
