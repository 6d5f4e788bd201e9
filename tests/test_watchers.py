"""Watching a request from a peer that did not send it (issue 17): receipts are pushed to the
requester only, so a watcher elsewhere used to wait for anti-entropy (up to 4x the sync interval)
while its "why pending" called owners it had just heard from "offline". Now a watched request
makes the watcher sync with the owners it waits on at once (at most once a second each), and the
text says "offline" only for an owner whose last call failed or that has been silent for a while.
Real peer processes, with anti-entropy slowed to 10 minutes so that only the watch can bring the
receipts within the test's wait."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from record_support import lineage

from fiun_peer.agent import Agent, Progress
from fiun_peer.identity import Identity
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2
from fiun_peer.store import Store
from simulations.centralized import SimConfig, prepare
from simulations.network import publish_stage
from simulations.peers import PeerCluster

FORGET = 3   # g holds it (discovery); bob's a is published without it (inherited)


@pytest.fixture(scope="module")
def stage():
    return prepare(SimConfig(framework="il", model="mlp", seed=0))


def test_a_watcher_gets_receipts_without_waiting_for_anti_entropy(stage, tmp_path) -> None:
    with PeerCluster(tmp_path, ["alice", "bob", "carol"], sync_interval=600.0, startup_timeout=300) as c:
        alice, bob, carol = c.peers
        publish_stage(stage, {"g": alice})
        c.wait_lineage(bob, 1)
        publish_stage(stage, {"a": bob}, exclude_labels={"a": [FORGET]})
        for p in c.peers:
            c.wait_lineage(p, 2)
        alice.admin.RequestUnlearning(admin_pb2.RequestUnlearningRequest(forget_labels=[FORGET],
                                                                         request_id="watched"), timeout=60)
        c.wait_request(alice, "watched", timeout=300)        # done at the requester: receipts pushed there
        # Carol sent nothing and gets no receipt pushed; her anti-entropy rounds are 10 minutes
        # apart. Watching the request on her (the CLI polls twice a second) fetches them now.
        done = subprocess.run([sys.executable, "-m", "fiun_peer.cli", "admin", "--home", str(carol.home), "request",
                               "watched", "--wait", "--wait-timeout", "60"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2/2 models applied - done" in done.stdout, done.stdout


def test_why_pending_says_offline_only_for_owners_not_heard_from(tmp_path) -> None:
    me, other = Identity.generate("me"), Identity.generate("other")
    store = Store(tmp_path / "h")
    store.add_record(lineage(other, "m", [1]))
    agent = Agent(me, store)
    agent.book.peers[other.public_key_hex] = "10.0.0.9:50051"
    assert "not heard from since this peer started: offline or applying" in agent._owner_note("m", "applying")
    agent.ingest(lineage(other, "m2", [2]).envelope, source="push")      # it pushed us its own record
    note = agent._owner_note("m", "applying")
    assert "at 10.0.0.9:50051, heard from 0s ago: applying" in note and "offline" not in note
    agent.book.contacted("10.0.0.9:50051", answered=False)                       # then a call to it failed
    assert "unreachable 0s ago: offline or applying" in agent._owner_note("m", "applying")
    agent.book.contacted("10.0.0.9:50051", answered=True)
    assert "offline" not in agent._owner_note("m", "applying")
    waiting = [Progress("m", False, "pending"), Progress("m2", False, "applied")]
    assert agent.awaited_peers(waiting) == ["10.0.0.9:50051"]
    assert agent.awaited_peers([Progress("m", False, "applied")]) == []
    agent.book.heard[other.public_key_hex] = time.time() - 3600            # silent for an hour
    agent.book.lost.clear()
    assert "not heard from for 3600s: offline or applying" in agent._owner_note("m", "applying")
    store.close()
