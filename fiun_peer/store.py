"""The peer's durable state: SQLite for records, counters and agent state; files for blobs.

Layout under ``home``: ``store.sqlite`` (WAL, synchronous=FULL: a committed write survives a crash)
and ``blobs/<2 hex>/<sha256>`` (content-addressed, written atomically: temp file, fsync, rename;
temp files a crash leaves behind are removed at the next open). Every blob has a kind (see
:data:`BLOB_KINDS`), kept in SQLite beside it: what the blob service may serve, and to whom, depends
on it (``fiun_peer.policy.blob_refusal``). A blob without a kind is never served. One connection guarded by a
re-entrant lock makes the store safe to share between the trio loop, gRPC handler threads and torch
workers; :meth:`Store.transaction` groups several writes into one atomic step.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fiun_peer import faults
from fiun_peer.files import TMP_SUFFIX, write_atomic
from fiun_peer.records import Record, RecordError, is_digest, parse_record, record_id_of
from fiun_peer.state import MODEL, MODEL_FISHERS

DB_FILE = "store.sqlite"
BLOB_DIR = "blobs"
_IN_CHUNK = 500
#: fisher: an unlearning Fisher (Eq. 3) named in a signed announcement; model_fisher: a model's own
#: Fisher (Eq. 4); weights: a model version; data: an owner's training data.
BLOB_KINDS = ("fisher", "model_fisher", "weights", "data")
#: PRAGMA user_version of a store whose blobs all have their kinds (1: issue 14's blob kinds).
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    record_id      TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    predicate_type TEXT NOT NULL,
    subject_name   TEXT NOT NULL,
    subject_digest TEXT NOT NULL,
    signer         TEXT NOT NULL,
    envelope       BLOB NOT NULL,
    received_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blob_kinds (
    digest TEXT NOT NULL,
    kind   TEXT NOT NULL,
    PRIMARY KEY (digest, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_subject ON records (subject_digest, kind);
"""


class Store:
    """Records, counters, key/value state and content-addressed blobs of one peer."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.blob_root = self.home / BLOB_DIR
        self.blob_root.mkdir(parents=True, exist_ok=True)
        self.removed_temp_files = self._remove_temp_files()
        self._lock = threading.RLock()
        self._depth = 0
        # Parsed-record cache: record content is immutable (id = hash), so entries never go stale.
        self._parsed: dict[str, Record] = {}
        self._db = sqlite3.connect(self.home / DB_FILE, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self.transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self.migrated_blobs = self._derive_blob_kinds() if version < SCHEMA_VERSION else 0
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- lifecycle ------------------------------------------------------------------------------------

    def _remove_temp_files(self) -> int:
        """Delete half-written blob temp files a crash left behind (a store has one owner process,
        so at open no write can be in flight). They were never visible under a digest."""
        removed = 0
        for tmp in [*self.blob_root.glob(f"*/.*{TMP_SUFFIX}"), *self.blob_root.glob(f"incoming/*{TMP_SUFFIX}")]:
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write step; nests (inner blocks join the outer transaction)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield
                if outer:
                    faults.point("before_commit")  # a crash here must roll the whole step back
            except BaseException:
                self._depth -= 1
                if outer:
                    self._db.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- records --------------------------------------------------------------------------------------

    def add_record(self, record: Record) -> bool:
        """Store a verified record; False when a record with that id is already held."""
        if record.record_id != record_id_of(record.envelope):
            raise ValueError("record_id does not match the envelope bytes")
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO records (record_id, kind, predicate_type, subject_name,"
                " subject_digest, signer, envelope, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.record_id, record.kind, record.predicate_type, record.subject_name,
                 record.subject_digest, record.signer, record.envelope, time.time()))
            return cur.rowcount == 1

    def _to_record(self, record_id: str, envelope: bytes) -> Record:
        cached = self._parsed.get(record_id)
        if cached is None:
            # Re-verify what comes off disk; the limit is the size it was accepted at.
            cached = parse_record(bytes(envelope), max_bytes=len(envelope))
            self._parsed[record_id] = cached
        return cached

    def has_record(self, record_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM records WHERE record_id = ?", (record_id,)))

    def record_ids(self) -> set[str]:
        return {row[0] for row in self._query("SELECT record_id FROM records")}

    def record_count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._query("SELECT COUNT(*) FROM records")[0][0]
        return self._query("SELECT COUNT(*) FROM records WHERE kind = ?", (kind,))[0][0]

    def records(self, kind: str | None = None) -> list[Record]:
        """Records in arrival order, optionally of one kind (lineage, request, announcement, receipt)."""
        if kind is None:
            rows = self._query("SELECT record_id, envelope FROM records ORDER BY seq")
        else:
            rows = self._query("SELECT record_id, envelope FROM records WHERE kind = ? ORDER BY seq",
                               (kind,))
        return [self._to_record(rid, env) for rid, env in rows]

    def envelopes_except(self, have: set[str]) -> list[bytes]:
        """Envelopes of the records whose id is not in ``have``, in arrival order (what a Sync
        caller lacks). Reads the ids first and only the missing envelopes: a caller that is up to
        date, the usual case, costs one index scan, not a copy of every record."""
        seqs = [seq for seq, rid in self._query("SELECT seq, record_id FROM records ORDER BY seq")
                if rid not in have]
        out: list[bytes] = []
        for i in range(0, len(seqs), _IN_CHUNK):  # SQLite caps the number of bound parameters
            chunk = seqs[i:i + _IN_CHUNK]
            rows = self._query(f"SELECT envelope FROM records WHERE seq IN ({','.join('?' * len(chunk))})"
                               " ORDER BY seq", tuple(chunk))
            out.extend(bytes(row[0]) for row in rows)
        return out

    # -- counters -------------------------------------------------------------------------------------

    def incr(self, name: str, by: int = 1) -> int:
        """Add ``by`` to a persistent counter; returns the new value."""
        with self.transaction():
            self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, by))
            return self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def counters(self) -> dict[str, int]:
        return dict(self._query("SELECT name, value FROM counters ORDER BY name"))

    # -- agent state ----------------------------------------------------------------------------------

    def put_state(self, key: str, value: dict[str, Any]) -> None:
        if not isinstance(value, dict):
            raise TypeError("state values are dicts")
        text = json.dumps(value, sort_keys=True, allow_nan=False)
        with self.transaction():
            self._db.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, text))

    def get_state(self, key: str) -> dict[str, Any] | None:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def states(self, prefix: str = "") -> dict[str, dict[str, Any]]:
        """All state entries whose key starts with ``prefix``, by key."""
        rows = self._query("SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key",
                           (len(prefix), prefix))
        return {key: json.loads(value) for key, value in rows}

    # -- blob kinds -----------------------------------------------------------------------------------

    def _derive_blob_kinds(self) -> int:
        """Kinds for the blobs of a store made before blobs had kinds, from the records and state
        that name them. A blob nothing names keeps no kind, and is never served. Returns how many
        blobs got a kind."""
        named: dict[str, set[str]] = {}

        def name(digest: object, kind: str) -> None:
            if is_digest(digest):
                named.setdefault(digest, set()).add(kind)

        for rid, env in self._db.execute("SELECT record_id, envelope FROM records").fetchall():
            try:
                rec = self._to_record(rid, env)
            except RecordError:  # cannot name anything we could trust
                continue
            p, kind = rec.predicate, rec.kind
            if kind == "lineage":
                name(rec.subject_digest, "weights")
                name(p.get("previous_digest"), "weights")
                name(p.get("data_digest"), "data")   # records before issue 14 named the data
                for digest in (p.get("model_fisher_digests") or {}).values():
                    name(digest, "model_fisher")
            elif kind == "receipt":
                name(p["old_digest"], "weights")
                name(p["new_digest"], "weights")
            elif kind == "announcement":
                name(p["fisher_digest"], "fisher")
                name(p["model_digest"], "weights")
        for key, text in self._db.execute("SELECT key, value FROM state").fetchall():
            value = json.loads(text)
            if key.startswith(MODEL):
                for field in ("digest", "original"):
                    name(value.get(field), "weights")
                name(value.get("data"), "data")
            elif key.startswith(MODEL_FISHERS):
                for digest in value.values():
                    name(digest, "model_fisher")
        held = [path.name for path in self.blob_root.glob("??/*") if is_digest(path.name)]
        rows = [(digest, kind) for digest in held for kind in sorted(named.get(digest, ()))]
        self._db.executemany("INSERT OR IGNORE INTO blob_kinds (digest, kind) VALUES (?, ?)", rows)
        return len({digest for digest, _ in rows})

    def _set_kind(self, digest: str, kind: str) -> None:
        if kind not in BLOB_KINDS:
            raise ValueError(f"unknown blob kind {kind!r}; expected one of {', '.join(BLOB_KINDS)}")
        with self.transaction():
            self._db.execute("INSERT OR IGNORE INTO blob_kinds (digest, kind) VALUES (?, ?)", (digest, kind))

    def blob_kinds(self, digest: str) -> set[str]:
        """The kinds a blob was stored as (usually one; empty: unknown, never served)."""
        return {row[0] for row in self._query("SELECT kind FROM blob_kinds WHERE digest = ?", (digest,))}

    def announced(self, digest: str) -> bool:
        """True when a stored Fisher announcement names this digest (its subject)."""
        return bool(self._query("SELECT 1 FROM records WHERE subject_digest = ? AND kind = 'announcement' LIMIT 1",
                                (digest,)))

    # -- blobs ----------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (whether or not it exists)."""
        if not is_digest(digest):
            # Also what keeps a hostile "digest" from naming a path outside blobs/.
            raise ValueError(f"not a lowercase hex sha256 digest: {digest!r}")
        return self.blob_root / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def get_blob(self, digest: str) -> bytes | None:
        """The blob's bytes as stored (not re-hashed: see :meth:`verify_blob`), or None."""
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            return None

    def open_blob(self, digest: str) -> BinaryIO:
        """A binary file object for chunked reads; raises FileNotFoundError when absent."""
        return open(self.blob_path(digest), "rb")

    def verify_blob(self, digest: str) -> bool:
        """True when the blob exists and its bytes hash to ``digest``."""
        try:
            with self.open_blob(digest) as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest() == digest
        except FileNotFoundError:
            return False

    def put_blob(self, data: bytes, *, kind: str) -> str:
        """Store ``data`` content-addressed as a blob of ``kind`` (one of :data:`BLOB_KINDS`); returns
        its sha256 hex. Idempotent. The kind is recorded after the bytes: a crash in between leaves
        a blob without a kind, which is never served (the safe side)."""
        if kind not in BLOB_KINDS:
            raise ValueError(f"unknown blob kind {kind!r}; expected one of {', '.join(BLOB_KINDS)}")
        digest = hashlib.sha256(data).hexdigest()
        if not self.verify_blob(digest):  # rewrites a damaged copy instead of trusting it
            write_atomic(self.blob_path(digest), data)
        self._set_kind(digest, kind)
        return digest
