"""Who may say what: every peer checks, on ingest, that a record's signer is entitled to it.

These feed a real Agent over a real Store (no network: the rules are what is under test)."""

from __future__ import annotations

from pathlib import Path

import pytest
from record_support import d, lineage

from fiun_peer import records as R
from fiun_peer.agent import Agent
from fiun_peer.identity import Identity
from fiun_peer.lineage import build_view
from fiun_peer.policy import PolicyError, RequesterPolicy
from fiun_peer.store import Store

ME = Identity.from_seed(bytes([1]) * 32, "me")
ALICE = Identity.from_seed(bytes([2]) * 32, "alice")     # owns g (labels 0-4): discovery for 3
BOB = Identity.from_seed(bytes([3]) * 32, "bob")         # owns a (labels 5-9), child of g
MALLORY = Identity.from_seed(bytes([4]) * 32, "mallory")  # owns nothing
DATA_SUBJECT = Identity.from_seed(bytes([5]) * 32, "subject")


def announcement(who: Identity, model: str, request: str = "r1", fisher: str = "f1") -> R.Record:
    return R.build_announcement(who, request_id=request, model_id=model, model_digest=d(f"{model}-v1"),
                                fisher_digest=d(fisher), shapes={"weight": [10, 16], "bias": [10]},
                                estimator="empirical", labels=[3])


def receipt(who: Identity, model: str, request: str = "r1", new: str = "new") -> R.Record:
    return R.build_receipt(who, request_id=request, model_id=model, old_digest=d(f"{model}-v1"), new_digest=d(new))


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    store = Store(tmp_path)
    a = Agent(ME, store, requesters=RequesterPolicy.of([DATA_SUBJECT.public_key_hex]))
    for rec in (lineage(ALICE, "g", [0, 1, 2, 3, 4]), lineage(BOB, "a", [5, 6, 7, 8, 9], ("g",))):
        assert a.ingest(rec.envelope, source="test")[0]
    yield a
    store.close()


def ingest(agent: Agent, rec: R.Record) -> str:
    accepted, record_id, reason = agent.ingest(rec.envelope, source="test")
    assert record_id == rec.record_id
    assert accepted == (reason in ("accepted", "duplicate"))
    return reason


def test_lineage_only_from_the_owner(agent: Agent) -> None:
    records = agent.store.record_count()
    assert ingest(agent, lineage(MALLORY, "g", [0, 1])) == "not_owner"             # claiming a taken id
    assert ingest(agent, lineage(MALLORY, "g", [0, 1, 2, 3, 4], version=2)) == "not_owner"
    assert ingest(agent, lineage(ALICE, "g", [0, 1, 9])) == "conflict"              # a second version 1
    assert ingest(agent, lineage(ALICE, "g", [0, 1, 2, 3, 4], version=2)) == "accepted"
    assert agent.store.record_count() == records + 1
    assert agent.view.owner("g") == ALICE.public_key_hex
    c = agent.store.counters()
    assert (c["rejected_not_owner"], c["rejected_conflict"]) == (2, 1)


def test_later_versions_move_the_view_as_a_rebuild_from_the_store_would(agent: Agent) -> None:
    _ = agent.view                                            # built: later versions fold into it
    for rec in (lineage(ALICE, "g", [0, 1, 2, 3, 4], version=3), lineage(ALICE, "g", [0, 1, 2, 3, 4], version=2),
                lineage(BOB, "a", [5, 6, 7, 8, 9], ("g",), version=2)):
        assert ingest(agent, rec) == "accepted"
    rebuilt = build_view(agent.store.records("lineage"))
    assert {m: r.record_id for m, r in agent.view.latest.items()} == {m: r.record_id for m, r in rebuilt.latest.items()}
    assert agent.view.latest["g"].predicate["version"] == 3   # an older version arriving later does not win
    assert agent.view.umig.models() == rebuilt.umig.models() == ["g", "a"]


def test_a_later_version_before_its_first_is_deferred_then_accepted(agent: Agent) -> None:
    v2 = lineage(MALLORY, "m", [1], version=2)
    assert ingest(agent, v2) == "unknown_subject"
    assert ingest(agent, v2) == "unknown_subject"           # sync offers it again: counted once
    assert agent.store.counters()["rejected_unknown_subject"] == 1
    assert ingest(agent, lineage(MALLORY, "m", [1])) == "accepted"
    assert ingest(agent, v2) == "duplicate"                 # taken from the waiting list already


def test_requester_policy(agent: Agent) -> None:
    m1 = R.build_request(MALLORY, request_id="m1", forget_labels=[3])
    assert ingest(agent, m1) == "not_requester"
    assert ingest(agent, R.build_request(BOB, request_id="b1", forget_labels=[3])) == "accepted"       # a member
    assert ingest(agent, R.build_request(ME, request_id="me1", forget_labels=[3])) == "accepted"       # own key
    assert ingest(agent, R.build_request(DATA_SUBJECT, request_id="s1", forget_labels=[3])) == "accepted"  # listed
    assert ingest(agent, R.build_request(ALICE, request_id="b1", forget_labels=[4])) == "conflict"    # id taken
    # Mallory becomes a member by publishing a model; her waiting request now passes.
    assert ingest(agent, lineage(MALLORY, "mm", [1])) == "accepted"
    assert agent.store.has_record(m1.record_id) and ingest(agent, m1) == "duplicate"
    with pytest.raises(PolicyError, match="64 hex"):
        RequesterPolicy.of(["abc"])


def test_announcements_only_from_the_owner_of_a_discovery_model(agent: Agent) -> None:
    first = announcement(ALICE, "g")
    assert ingest(agent, first) == "unknown_subject"                          # request not here yet
    assert ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3])) == "accepted"
    assert ingest(agent, first) == "duplicate"                                # taken once it could be
    assert ingest(agent, announcement(MALLORY, "g")) == "not_owner"
    assert ingest(agent, announcement(BOB, "a")) == "not_discovery"            # a's data holds no label 3
    assert ingest(agent, announcement(ALICE, "nope")) == "unknown_subject"
    assert agent.ledger.by("announcement", "r1")["g"].record_id == first.record_id


def test_a_second_different_fisher_is_flagged_and_ignored(agent: Agent) -> None:
    ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3]))
    first, second = announcement(ALICE, "g", fisher="f1"), announcement(ALICE, "g", fisher="f2")
    assert ingest(agent, first) == "accepted"
    assert ingest(agent, second) == "equivocation"
    assert ingest(agent, second) == "equivocation"            # offered again: flagged once
    assert agent.ledger.by("announcement", "r1")["g"].record_id == first.record_id
    c = agent.store.counters()
    assert c["rejected_equivocation"] == 1 and c["equivocations"] == 1
    _, progress, _ = agent.request_progress("r1")
    why = {p.model_id: p.why_pending for p in progress}
    assert "flagged" in why["g"] and ALICE.public_key_hex[:16] in why["g"] and "only the first" in why["g"]
    assert not agent.store.has_record(second.record_id)


def test_receipts_only_from_the_owner(agent: Agent) -> None:
    ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3]))
    assert ingest(agent, receipt(MALLORY, "a")) == "not_owner"
    assert ingest(agent, receipt(ALICE, "a")) == "not_owner"
    assert ingest(agent, receipt(BOB, "a", request="unknown")) == "unknown_subject"
    assert ingest(agent, receipt(BOB, "a")) == "accepted"
    assert ingest(agent, receipt(BOB, "a", new="other")) == "equivocation"
    _, progress, _ = agent.request_progress("r1")
    assert {p.model_id: p.state for p in progress}["a"] == "applied"


def test_deferred_records_are_taken_once_what_they_lack_arrives(agent: Agent) -> None:
    """Gossip keeps no order between senders: an announcement may beat its request, a later version
    its first. They wait in the peer and are stored as soon as the missing record is."""
    ann = announcement(ALICE, "g", request="late")
    v2 = lineage(MALLORY, "n", [1], version=2)
    assert ingest(agent, ann) == "unknown_subject" and ingest(agent, v2) == "unknown_subject"
    assert ingest(agent, R.build_request(BOB, request_id="late", forget_labels=[3])) == "accepted"
    assert agent.store.has_record(ann.record_id)           # no second offer needed
    assert ingest(agent, lineage(MALLORY, "n", [1])) == "accepted"
    assert agent.store.has_record(v2.record_id)
    # A deferred forgery stays refused when the missing record arrives.
    forged = announcement(MALLORY, "z", request="late")
    assert ingest(agent, forged) == "unknown_subject"                 # z not known yet
    assert ingest(agent, lineage(ALICE, "z", [3])) == "accepted"      # z is Alice's, not Mallory's
    assert not agent.store.has_record(forged.record_id)
    assert agent.store.counters()["rejected_not_owner"] == 1


def test_who_may_read_each_kind_of_blob() -> None:
    """One table decides what leaves a peer: peers get announced Fishers, the owner's credential gets
    weights, model Fishers are not shared today, data goes to no one, unknown blobs to no one."""
    from fiun_peer.policy import BLOB_READERS, blob_refusal
    from fiun_peer.store import BLOB_KINDS

    assert set(BLOB_READERS) == set(BLOB_KINDS)
    allowed = {(kinds, reader, announced): blob_refusal(kinds, reader, announced=announced) == ""
               for kinds in [(), ("fisher",), ("model_fisher",), ("weights",), ("data",), ("fisher", "data")]
               for reader in ("peer", "owner") for announced in (False, True)}
    assert {k for k, ok in allowed.items() if ok} == {
        (("fisher",), "peer", True), (("weights",), "owner", False), (("weights",), "owner", True)}
    assert "not serve data" in blob_refusal(["fisher", "data"], "peer", announced=True)  # the most private wins
    with pytest.raises(ValueError):
        blob_refusal(["fisher"], "anyone", announced=True)


# -- parent versions and not_affected receipts (issue 18) ----------------------------------------------


def test_a_model_naming_an_unknown_parent_version_waits_for_the_receipt_that_makes_it(agent: Agent) -> None:
    """g's version 2 is known once Alice's receipt that made it is: until then a child naming it is
    refused for now (counted once, nothing stored) and taken as soon as the receipt arrives."""
    assert ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3])) == "accepted"
    child = lineage(MALLORY, "c", [7], ("g",), parent_versions={"g": 2})
    never = lineage(MALLORY, "n", [7], ("g",), parent_versions={"g": 9})
    records = agent.store.record_count()
    for rec in (child, child, never):
        assert ingest(agent, rec) == "unknown_parent_version"
    assert agent.store.record_count() == records and "c" not in agent.view.umig
    assert agent.store.counters()["rejected_unknown_parent_version"] == 2    # once per record
    assert ingest(agent, receipt(ALICE, "g", new="g-v2")) == "accepted"      # g v1 -> v2 by r1
    assert agent.store.has_record(child.record_id) and not agent.store.has_record(never.record_id)
    g = agent.view.umig
    assert (agent.view.version_of("g", d("g-v2")), g.parent_version("g", "c")) == (2, 2)
    assert "c" not in g.unlearning_subgraph([3], "r1") and "c" in g.unlearning_subgraph([3])
    assert "a" in g.unlearning_subgraph([3], "r1")                          # a derived from g v1
    rebuilt = build_view(agent.store.records("lineage"), agent.store.records("receipt"))
    assert rebuilt.versions == agent.view.versions
    assert [(p, rebuilt.umig.parent_version(p, m)) for m in ("a", "c") for p in rebuilt.umig.parents(m)] == \
        [("g", 1), ("g", 2)]


def test_a_child_whose_parent_arrives_later_waits_in_the_view_for_the_version(agent: Agent) -> None:
    """Its parent unknown, the record cannot be judged: it is stored and joins the graph once the
    parent and the version it names are known (a rebuild from the store agrees at every step)."""
    ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3]))
    child = lineage(MALLORY, "c", [7], ("p",), parent_versions={"p": 2})
    assert ingest(agent, child) == "accepted" and "c" not in agent.view.umig
    assert ingest(agent, lineage(ALICE, "p", [3])) == "accepted"
    assert "p" in agent.view.umig and "c" not in agent.view.umig and "c" in agent.view.waiting
    assert ingest(agent, receipt(ALICE, "p", new="p-v2")) == "accepted"
    assert agent.view.umig.parents("c") == ["p"] and agent.view.umig.parent_version("p", "c") == 2
    rebuilt = build_view(agent.store.records("lineage"), agent.store.records("receipt"))
    assert rebuilt.umig.models() == agent.view.umig.models() and not rebuilt.waiting


def test_not_affected_receipts_only_for_models_outside_the_request(agent: Agent) -> None:
    ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3]))
    ingest(agent, receipt(ALICE, "g", new="g-v2"))
    assert ingest(agent, lineage(MALLORY, "c", [7], ("g",), parent_versions={"g": 2})) == "accepted"
    spared = R.build_receipt(MALLORY, request_id="r1", model_id="c", old_digest=d("c-v1"), new_digest=d("c-v1"),
                             state=R.NOT_AFFECTED, reason="derived from g v2, a version that had applied it")
    false_claim = R.build_receipt(BOB, request_id="r1", model_id="a", old_digest=d("a-v1"), new_digest=d("a-v1"),
                                  state=R.NOT_AFFECTED, reason="not me")
    assert ingest(agent, false_claim) == "contradicts_lineage"       # a derives from g v1: affected
    assert ingest(agent, spared) == "accepted"
    assert not agent.store.has_record(false_claim.record_id)
    assert agent.store.counters()["rejected_contradicts_lineage"] == 1
    assert agent.view.version_of("c", d("c-v1")) == 1 and len(agent.view.versions["c"]) == 1  # no new version
    _, progress, done = agent.request_progress("r1")
    by = {p.model_id: p for p in progress}
    assert (by["c"].state, by["c"].reason, by["c"].discovery_ancestors) == \
        ("not_affected", "derived from g v2, a version that had applied it", [])
    assert (by["g"].state, by["a"].state, done) == ("applied", "pending", False)
    assert ingest(agent, receipt(BOB, "a", new="a-v2")) == "accepted"
    assert agent.request_progress("r1")[2]                             # done: every model answered


def test_a_record_from_before_issue_18_reads_as_derived_from_version_1(agent: Agent) -> None:
    """Old peers filled every parent reference with the parent's first version, whatever the child
    was really derived from. The migration rule: read it as written. Such a child inherits every
    request its parent applied (what those peers did); an owner who derived from a later version
    publishes the model again under a new id, naming that version."""
    ingest(agent, R.build_request(BOB, request_id="r1", forget_labels=[3]))
    ingest(agent, receipt(ALICE, "g", new="g-v2"))                        # g applied r1 before...
    old = lineage(MALLORY, "old", [7], ("g",))                           # ...old was published from it
    assert old.predicate["parents"][0]["digest"] == d("g-v1") and ingest(agent, old) == "accepted"
    g = agent.view.umig
    assert g.parent_version("g", "old") == 1 and g.discovery_ancestors("old", [3], "r1") == ["g"]
