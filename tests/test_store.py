"""Store: records, counters, state and content-addressed blobs, on a real SQLite file and real files."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fiun_peer import records as R
from fiun_peer.identity import Identity
from fiun_peer.store import Store, write_atomic

ALICE = Identity.from_seed(bytes(range(32)), "alice")
D = [hashlib.sha256(bytes([i])).hexdigest() for i in range(8)]


def receipt(i: int) -> R.Record:
    return R.build_receipt(ALICE, request_id=f"req-{i}", model_id="m", old_digest=D[0], new_digest=D[1])


def request(i: int) -> R.Record:
    return R.build_request(ALICE, request_id=f"req-{i}", forget_labels=[1], created_at=float(i))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "home") as s:
        yield s


def test_records_round_trip_in_arrival_order(store: Store) -> None:
    batch = [receipt(0), request(0), receipt(1), request(1)]
    assert [store.add_record(r) for r in batch] == [True] * 4
    assert store.add_record(receipt(0)) is False  # duplicate by content
    assert [r.record_id for r in store.records()] == [r.record_id for r in batch]
    assert [r.record_id for r in store.records("request")] == [batch[1].record_id, batch[3].record_id]
    assert store.records("lineage") == []
    assert store.record_ids() == {r.record_id for r in batch}
    assert store.record_count() == 4 and store.record_count("receipt") == 2
    got = next(r for r in store.records() if r.record_id == batch[2].record_id)
    assert got == batch[2] and got.predicate == batch[2].predicate
    assert store.has_record(batch[2].record_id)
    assert not store.has_record("0" * 64)


def test_envelopes_except_lists_what_a_caller_lacks_oldest_first(store: Store) -> None:
    batch = [receipt(i) if i % 2 else request(i) for i in range(1203)]  # more than one IN (...) chunk
    for r in batch:
        store.add_record(r)
    have = {r.record_id for r in batch[::3]}
    assert store.envelopes_except(have) == [r.envelope for r in batch if r.record_id not in have]
    assert store.envelopes_except({r.record_id for r in batch}) == []
    assert store.envelopes_except(set()) == [r.envelope for r in batch]


def test_records_survive_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.add_record(receipt(0))
        s.add_record(request(0))
        s.incr("rejected_bad_signature", 3)
        s.put_state("model/m", {"version": 2})
    with Store(tmp_path) as s:
        assert [r.kind for r in s.records()] == ["receipt", "request"]
        assert s.counters() == {"rejected_bad_signature": 3}
        assert s.get_state("model/m") == {"version": 2}
        assert s.add_record(receipt(0)) is False


def test_add_record_rejects_inconsistent_id(store: Store) -> None:
    record = receipt(0)
    forged = R.Record(**{**record.__dict__, "record_id": "0" * 64})
    with pytest.raises(ValueError):
        store.add_record(forged)
    assert store.record_count() == 0


def test_counters(store: Store) -> None:
    assert store.counters() == {}
    assert store.incr("a") == 1
    assert store.incr("a", by=4) == 5
    store.incr("b")
    assert store.counters() == {"a": 5, "b": 1}


def test_state(store: Store) -> None:
    assert store.get_state("req/1") is None
    store.put_state("req/1", {"done": False, "models": ["a"]})
    store.put_state("req/1", {"done": True, "models": ["a"]})
    store.put_state("req/2", {"done": False})
    store.put_state("model/x", {})
    assert store.get_state("req/1") == {"done": True, "models": ["a"]}
    assert store.states("req/") == {"req/1": {"done": True, "models": ["a"]}, "req/2": {"done": False}}
    assert set(store.states()) == {"req/1", "req/2", "model/x"}
    assert store.states("%") == {}  # no LIKE wildcards
    with pytest.raises(TypeError):
        store.put_state("bad", [1, 2])  # type: ignore[arg-type]


def test_transaction_is_atomic(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_record(receipt(0))
        store.put_state("k", {"v": 1})
        store.incr("c")
        raise RuntimeError("crash mid-step")
    assert store.record_count() == 0 and store.get_state("k") is None and store.counters() == {}
    with store.transaction():
        store.add_record(receipt(0))
        store.put_state("k", {"v": 1})
    assert store.record_count() == 1 and store.get_state("k") == {"v": 1}


def test_threads_share_the_store(store: Store) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                store.add_record(receipt(t * 100 + i))
                store.incr("n")
                store.put_state(f"t/{t}/{i}", {"i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.record_count() == 150 and store.counters() == {"n": 150} and len(store.states("t/")) == 150


def test_blobs(store: Store) -> None:
    data = os.urandom(3000)
    digest = store.put_blob(data, kind="fisher")
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put_blob(data, kind="fisher") == digest  # idempotent
    path = store.blob_path(digest)
    assert path == store.home / "blobs" / digest[:2] / digest
    assert store.has_blob(digest) and store.blob_size(digest) == 3000
    assert store.get_blob(digest) == data
    with store.open_blob(digest) as fh:
        assert fh.read(100) == data[:100]
    assert store.verify_blob(digest)
    assert not [p for p in path.parent.iterdir() if p.name != digest]  # no temp leftovers
    missing = hashlib.sha256(b"nope").hexdigest()
    assert store.get_blob(missing) is None and not store.has_blob(missing)
    assert store.blob_size(missing) is None
    with pytest.raises(FileNotFoundError):
        store.open_blob(missing)
    assert store.put_blob(b"", kind="fisher") == hashlib.sha256(b"").hexdigest()


def test_blob_digest_is_validated(store: Store) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63, ""):
        with pytest.raises(ValueError):
            store.has_blob(bad)


def test_damaged_blob_is_rewritten_by_put(store: Store) -> None:
    data = b"fisher" * 1000
    digest = store.put_blob(data, kind="fisher")
    store.blob_path(digest).write_bytes(b"garbage")
    assert not store.verify_blob(digest)
    assert store.get_blob(digest) == b"garbage"  # reads do not hide damage; callers verify
    assert store.put_blob(data, kind="fisher") == digest
    assert store.get_blob(digest) == data


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "models" / "m" / "v2.safetensors"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["v2.safetensors"]


def test_sqlite_is_wal(store: Store) -> None:
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert (store.home / "store.sqlite").exists()


def test_blob_kinds_are_kept_and_checked(store: Store, tmp_path: Path) -> None:
    digest = store.put_blob(b"weights", kind="weights")
    assert store.blob_kinds(digest) == {"weights"} and store.blob_kinds(D[5]) == set()
    with pytest.raises(ValueError, match="unknown blob kind"):
        store.put_blob(b"x", kind="secret")
    assert not store.has_blob(hashlib.sha256(b"x").hexdigest())        # refused before writing
    with Store(store.home) as again:                                    # durable
        assert again.blob_kinds(digest) == {"weights"}


def test_a_store_from_before_blob_kinds_derives_them_from_what_names_each_blob(tmp_path: Path) -> None:
    """Migration: blobs of an old store get the kinds that its records and state give them; a blob
    nothing names gets none (never served). Old lineage records still name the data digest."""
    home = tmp_path / "old"
    blob = {k: hashlib.sha256(k.encode()).hexdigest() for k in
            ("weights", "new", "data", "mf", "cached_mf", "fisher", "stray")}
    with Store(home) as s:
        for k in blob:
            s.put_blob(k.encode(), kind="data")                         # any kind: wiped below
        statement = {"model_id": "m", "version": 1, "parents": [], "relation": "root", "labels": [1],
                     "head_tensors": ["head.weight"], "architecture": {}, "previous_digest": None,
                     "model_fisher_digests": {"empirical:T1:B64": blob["mf"]}, "data_digest": blob["data"]}
        s.add_record(R.sign_statement(ALICE, R.LINEAGE_V1, "model:m", blob["weights"], statement))
        s.add_record(R.build_receipt(ALICE, request_id="r", model_id="m", old_digest=blob["weights"],
                                     new_digest=blob["new"]))
        s.add_record(R.build_announcement(ALICE, request_id="r", model_id="m", model_digest=blob["weights"],
                                          fisher_digest=blob["fisher"], shapes={"weight": [1]},
                                          estimator="empirical", labels=[1]))
        s.put_state("mf:m", {"batch:T1:B64": blob["cached_mf"]})
    db = sqlite3.connect(home / "store.sqlite")                         # what an old store looks like
    db.execute("DELETE FROM blob_kinds")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    with Store(home) as s:
        assert s.migrated_blobs == 6
        assert {k: s.blob_kinds(d) for k, d in blob.items()} == {
            "weights": {"weights"}, "new": {"weights"}, "data": {"data"}, "mf": {"model_fisher"},
            "cached_mf": {"model_fisher"}, "fisher": {"fisher"}, "stray": set()}
        assert s.announced(blob["fisher"]) and not s.announced(blob["weights"])
    with Store(home) as s:
        assert s.migrated_blobs == 0                                    # once
