"""The ledger: the records this peer holds, and what it knows from them (docs/architecture.md).

Owns the one way a record gets into the store (:meth:`Ledger.ingest`: verify, authorize with
``fiun_peer.policy``, store, index), the records refused for now and retried when what they lack
arrives, the refusals already counted, the equivocation flags, the index of request-level records
by (kind, request id) and the lineage view (``fiun_peer.lineage``) built from the stored lineage
records and receipts. It never sends anything: the agent publishes, and reconcile acts on what is
stored here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import state
from .identity import Identity
from .lineage import LineageView, add_receipt, add_version, build_view
from .policy import Refusal, RequesterPolicy, authorize
from .records import Record, RecordError, parse_record, record_id_of
from .store import Store

log = logging.getLogger("fiun_peer.agent")
#: Records refused for now and kept for a retry, at most (sync offers the others again).
MAX_DEFERRED = 10_000
#: Refusals remembered so that a record sync offers again is counted once, at most.
MAX_REFUSED = 100_000


@dataclass
class ModelEntry:
    """One model of the lineage graph as this peer knows it (AdminService.ListLineage)."""
    model_id: str
    model_digest: str
    labels: list[int]
    owner: str
    version: int
    parents: list[dict[str, Any]] = field(default_factory=list)   # model_id, relation, digest, version


class Ledger:
    """Records in, and the views over them. Call it on the trio thread only.

    ``heard(signer)``: a peer pushed a record it signed (it is alive); ``stored()``: a new record
    is stored (work may be waiting for it)."""

    def __init__(self, identity: Identity, store: Store, requesters: RequesterPolicy, *,
                 heard: Callable[[str], None], stored: Callable[[], None]) -> None:
        self.identity, self.store, self.requesters = identity, store, requesters
        self._heard, self._stored = heard, stored
        self.arrived: dict[str, float] = {}  # record id -> when this peer first stored it
        self._view: LineageView | None = None
        # Refusals already counted, by record id: sync offers a refused record again every round.
        self._refused: dict[str, str] = {}
        self._request_index: dict[tuple[str, str], dict[str, Record]] | None = None
        self._deferred: dict[str, Record] = {}   # refused for now (see policy.Refusal.deferred)

    @property
    def view(self) -> LineageView:
        if self._view is None:
            self._view = build_view(self.store.records("lineage"), self.store.records("receipt"))
        return self._view

    # -- records in ---------------------------------------------------------------------------
    def ingest(self, envelope: bytes, *, source: str) -> tuple[bool, str, str]:
        """Verify and store one record. Returns (accepted, record_id, reason). Never raises for bad
        input: a rejected record is counted by reason and changes nothing stored."""
        if isinstance(envelope, bytes):
            rid = record_id_of(envelope)
            if self.store.has_record(rid):  # push, sync and gossip hand us many copies; verified once
                return True, rid, "duplicate"
        try:
            rec = parse_record(envelope)
        except RecordError as exc:
            self.store.incr(f"rejected_{exc.reason}")
            log.warning("record rejected", extra={"event": "record_rejected", "reason": exc.reason,
                                                   "source": source, "detail": exc.message})
            return False, "", exc.reason
        if source == "push":  # peers push only their own records: the signer is alive
            self._heard(rec.signer)
        if self.store.has_record(rec.record_id):
            return True, rec.record_id, "duplicate"
        refusal = self._authorize(rec)
        if refusal is not None:
            self._refuse(rec, refusal, source)
            if refusal.deferred and len(self._deferred) < MAX_DEFERRED:  # retried when what it lacks arrives
                self._deferred[rec.record_id] = rec
            return False, rec.record_id, refusal.reason
        self._refused.pop(rec.record_id, None)
        self._deferred.pop(rec.record_id, None)
        with self.store.transaction():  # the record and its counter in one commit (one fsync)
            self.store.add_record(rec)
            self.store.incr(f"records_{rec.kind}")
        self._index_add(rec)
        self.arrived.setdefault(rec.record_id, time.time())
        if rec.kind == "lineage":
            if rec.predicate["version"] > 1 and self._view is not None:
                add_version(self._view, rec)   # the graph is unchanged: no rebuild per new version
            else:
                self._view = None
        elif rec.kind == "receipt" and self._view is not None:
            add_receipt(self._view, rec)       # may make a parent version known
        log.info("record stored", extra={"event": "record_stored", "kind": rec.kind,
                                         "subject": rec.subject_name, "source": source})
        self._stored()
        if rec.kind in ("lineage", "request", "receipt") and self._deferred:
            self._retry_deferred()
        return True, rec.record_id, "accepted"

    def ingest_many(self, envelopes: list[bytes], *, source: str) -> int:
        """:meth:`ingest` each envelope (a Sync reply) in one store transaction: one commit for the
        batch, not one per record. 64 peers committing every record of a request separately queued
        thousands of fsyncs on one disk, and each peer's loop waited on them. Returns how many were
        new. A crash before the commit loses the batch, which the next sync brings again."""
        try:
            with self.store.transaction():
                return sum(self.ingest(env, source=source)[2] == "accepted" for env in envelopes)
        except BaseException:
            # Rolled back: what this pass folded into memory may not be on disk; rebuild from the store.
            self._view, self._request_index = None, None
            raise

    def _retry_deferred(self) -> None:
        """A lineage, request or receipt record arrived: records waiting for it (a model, a request,
        a parent version) need not wait for the next sync (gossip keeps no order between senders)."""
        waiting, self._deferred = self._deferred, {}
        for rec in waiting.values():   # ingest re-enters here for each one stored, so chains resolve
            if not self.store.has_record(rec.record_id):
                self.ingest(rec.envelope, source="deferred")

    # -- refusals -----------------------------------------------------------------------------
    def _authorize(self, rec: Record) -> Refusal | None:
        """Who may say what (fiun_peer.policy), judged on the records this peer holds."""
        return authorize(rec, view=self.view, own_key=self.identity.public_key_hex, requesters=self.requesters,
                         request_of=self.request,
                         existing=lambda kind, rid, m: self.by(kind, rid).get(m))

    def _refuse(self, rec: Record, refusal: Refusal, source: str) -> None:
        """Count a refusal once per record (sync re-offers it), log it, and flag equivocation."""
        if self._refused.get(rec.record_id) == refusal.reason:
            return
        if len(self._refused) >= MAX_REFUSED:  # bounded: forget the oldest
            self._refused.pop(next(iter(self._refused)))
        self._refused[rec.record_id] = refusal.reason
        self.store.incr(f"rejected_{refusal.reason}")
        level = logging.INFO if refusal.deferred else logging.WARNING
        log.log(level, "record refused", extra={"event": "record_refused", "reason": refusal.reason,
                                                "source": source, "signer": rec.signer, "detail": refusal.detail})
        if refusal.reason == "equivocation":
            p = rec.predicate
            flags = (state.flags(self.store, p["request_id"], p["model_id"])
                     or {"signer": rec.signer, "kind": rec.kind, "ignored": []})
            if rec.record_id not in flags["ignored"]:
                flags["ignored"].append(rec.record_id)
                state.put_flags(self.store, p["request_id"], p["model_id"], flags)
                self.store.incr("equivocations")

    def flags(self, request_id: str, model_id: str) -> str:
        """A readable note when the owner of ``model_id`` equivocated on ``request_id``, else ""."""
        f = state.flags(self.store, request_id, model_id)
        if not f:
            return ""
        return (f"flagged: owner {f['signer'][:16]}... sent {len(f['ignored'])} conflicting {f['kind']}(s) for "
                f"{model_id}; only the first is used")

    # -- request-level records ----------------------------------------------------------------
    def request(self, request_id: str) -> Record | None:
        """The request record ``request_id``, if this peer holds it."""
        return self._index().get(("request", request_id), {}).get("")

    def requests(self) -> list[Record]:
        """Every request record this peer holds, in the order it stored them."""
        return [slot[""] for (kind, _), slot in self._index().items() if kind == "request"]

    def by(self, kind: str, request_id: str) -> dict[str, Record]:
        """Records of ``kind`` for a request, keyed by model id (first stored one wins)."""
        return dict(self._index().get((kind, request_id), {}))

    def has_own(self, kind: str, request_id: str, model_id: str) -> bool:
        """Whether this peer's own record of ``kind`` for (request, model) is stored."""
        r = self._index().get((kind, request_id), {}).get(model_id)
        return r is not None and r.signer == self.identity.public_key_hex

    def receipts(self, request_id: str = "") -> list[Record]:
        """Every receipt this peer holds, or those of one request, in store order."""
        return [r for r in self.store.records("receipt") if not request_id or r.predicate["request_id"] == request_id]

    def _index(self) -> dict[tuple[str, str], dict[str, Record]]:
        """(kind, request id) -> {model id, or "" for the request itself: record}, built once from the
        store and kept up to date by ``ingest`` (the only writer of records): scanning every record
        on every ingest made a burst of N requests cost O(N^2)."""
        if self._request_index is None:
            self._request_index = {}
            for r in self.store.records():
                self._index_add(r)
        return self._request_index

    def _index_add(self, r: Record) -> None:
        if self._request_index is not None and r.kind != "lineage":
            slot = self._request_index.setdefault((r.kind, r.predicate["request_id"]), {})
            slot.setdefault(r.predicate.get("model_id", ""), r)

    # -- the lineage graph --------------------------------------------------------------------
    def lineage(self) -> list[ModelEntry]:
        """Every model of the graph with its current version and its parents' versions as named."""
        v = self.view
        out = []
        for m in v.umig.models():
            first = v.first[m].predicate
            out.append(ModelEntry(
                model_id=m, model_digest=v.digest(m), labels=first["labels"], owner=v.owner(m) or "",
                version=v.umig.version(m),
                parents=[{"model_id": p["model_id"], "relation": p["relation"], "digest": p["digest"],
                          "version": v.version_of(p["model_id"], p["digest"]) or 0}
                         for p in first["parents"]]))
        return out
