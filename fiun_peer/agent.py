"""The peer's behaviour: the one owner of peer state, running on the trio loop.

Flow (DESIGN.md): publish -> request -> locate -> discovery Fishers announced -> every affected
peer pulls, merges, dampens -> receipts. "Affected" is decided per parent version (issue 18): a
model that descends from the data only through versions that had applied the request already says
so with a ``not_affected`` receipt. All arithmetic and graph logic is ``fiun_peer.core`` (via
``fiun_peer.unlearn``); this module only decides *when* to call it and moves bytes.

Work is driven by one idempotent ``reconcile`` pass: it looks at the stored records and this peer's
own state and advances every (request, own model) pair one step. Any record arriving, a timer, or a
restart triggers it, so a crash at any point is repaired by simply running it again.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from . import faults
from .address_book import AddressBook
from .bridge import run_in_worker
from .core.fiun import FIUnSettings, check_fisher
from .formats import Classifier, versions
from .formats import prepare as prepare_publication
from .identity import Identity
from .lineage import LineageView, add_receipt, add_version, build_view, parents_missing
from .policy import Refusal, RequesterPolicy, authorize, fisher_problem
from .records import (
    APPLIED,
    MAX_REASON,
    NOT_AFFECTED,
    Record,
    RecordError,
    build_announcement,
    build_lineage,
    build_receipt,
    build_request,
    is_digest,
    is_valid_id,
    parse_record,
    receipt_state,
    record_id_of,
    sha256_hex,
)
from .seams import BlobFetcher, NoNetwork, Publisher
from .store import Store
from .tensors import TensorFileError, from_bytes, load_dataset_bytes, to_bytes
from .unlearn import apply_fiun_head, node_model_fisher, node_unlearning_fisher
from .validate import PublishError, check_parents

log = logging.getLogger("fiun_peer.agent")
#: Fisher pulls in flight at once for one model (an aggregate pulls one per discovery ancestor). On a
#: loaded machine a pull mostly waits to be scheduled at both ends, so waves of pulls cost latency.
PULL_PARALLEL = 16
#: Seconds without a direct word from a peer before "why pending" texts call it possibly offline.
QUIET_BEFORE_OFFLINE = 60.0


class AgentError(ValueError):
    """A caller's mistake (bad argument); the admin API maps it to INVALID_ARGUMENT."""


class NotFound(LookupError):
    pass


class NotReady(AgentError):
    """A well-formed call that this peer's view of the network cannot take yet (a parent whose
    lineage has not arrived, labels no model holds); the admin API maps it to FAILED_PRECONDITION,
    so a client knows that waiting (or ``--force``) may change the answer and fixing the input won't."""


def settings_key(s: FIUnSettings) -> str:
    """Which model Fisher (Eq. 4) a setting needs: it depends on the estimator only through these."""
    return f"{s.estimator}:T{s.temperature:g}:B{s.batch_size}"


def settings_from(d: dict[str, Any] | None) -> FIUnSettings:
    base = FIUnSettings().to_dict()
    unknown = set(d or {}) - set(base)
    if unknown:
        raise AgentError(f"unknown FIUn settings: {', '.join(sorted(unknown))}")
    for key, value in (d or {}).items():  # JSON types must match: "yes" is not a bool, 2.5 not a batch size
        want = type(base[key])
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, int | float) and not isinstance(value, bool) if want is float else
              isinstance(value, want) and not isinstance(value, bool))
        if not ok:
            raise AgentError(f"FIUn setting {key} must be a {want.__name__}, got {value!r}")
    try:
        return FIUnSettings(**{**base, **(d or {})})
    except (TypeError, ValueError) as exc:
        raise AgentError(f"invalid FIUn settings: {exc}") from exc


@dataclass(frozen=True)
class ParentRef:
    """A parent named at publish: which version the child derived from, by digest or by number
    (neither: the parent's current version as this peer knows it)."""
    model_id: str
    relation: str
    digest: str = ""
    version: int = 0


@dataclass
class Progress:
    model_id: str
    discovery: bool
    state: str                     # pending | announced | applied | not_affected
    why_pending: str = ""
    reason: str = ""               # not_affected: why, as its owner's receipt says
    old_digest: str = ""
    new_digest: str = ""
    received_at: float = 0.0
    applied_at: float = 0.0
    discovery_ancestors: list[str] = field(default_factory=list)


class Agent:
    """Owns the store-backed state of one peer. Call its methods on the trio thread only."""

    def __init__(self, identity: Identity, store: Store, *, publisher: Publisher | None = None,
                 fetcher: BlobFetcher | None = None, book: AddressBook | None = None,
                 defaults: FIUnSettings | None = None, requesters: RequesterPolicy | None = None) -> None:
        self.identity = identity
        self.requesters = requesters or RequesterPolicy()
        self.store = store
        # The network (fiun_peer.seams; the daemon passes fiun_peer.delivery's; None: none): our own
        # records out (see publish_record), Fisher blobs in (digest verified).
        self.publisher: Publisher = publisher if publisher is not None else NoNetwork()
        self.fetcher: BlobFetcher = fetcher if fetcher is not None else NoNetwork()
        # The known peers and when each was last heard from: the daemon's, shared with membership
        # (an empty book is falsy, hence "is not None").
        self.book = book if book is not None else AddressBook(identity.public_key_hex)
        self._pull_slots = trio.CapacityLimiter(PULL_PARALLEL)
        self.defaults = defaults or FIUnSettings()
        self.arrived: dict[str, float] = {}  # record id -> when this peer first stored it
        self._view: LineageView | None = None
        self._kick = trio.Event()
        self._work_lock = trio.Lock()
        # Refusals already counted, by record id: sync offers a refused record again every round.
        self._refused: dict[str, str] = {}
        self._request_index: dict[tuple[str, str], dict[str, Record]] | None = None
        self._deferred: dict[str, Record] = {}   # refused for now (see policy.Refusal.deferred)
        # (request id, own model) with nothing left to do, skipped by reconcile: without it every
        # pass re-read the state of every request this peer ever saw (1,000 of them: 24 ms a pass).
        self._settled: set[tuple[str, str]] = set()
        self._publishing: set[str] = set()       # model ids whose PublishModel is still computing
        self._models = versions.ModelCache()      # our models, loaded, by (id, version digest)
        # on_applied(apply seconds, seconds since the request was received): the metrics hook.
        self.on_applied: Callable[[float, float], None] | None = None

    # -- records in ---------------------------------------------------------------------------
    @property
    def view(self) -> LineageView:
        if self._view is None:
            self._view = build_view(self.store.records("lineage"), self.store.records("receipt"))
        return self._view

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
            self.heard[rec.signer] = time.time()
        if self.store.has_record(rec.record_id):
            return True, rec.record_id, "duplicate"
        refusal = self._authorize(rec)
        if refusal is not None:
            self._refuse(rec, refusal, source)
            if refusal.deferred and len(self._deferred) < 10_000:  # retried when what it lacks arrives
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
        self.kick()
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

    def _authorize(self, rec: Record) -> Refusal | None:
        """Who may say what (fiun_peer.policy), judged on the records this peer holds."""
        return authorize(rec, view=self.view, own_key=self.identity.public_key_hex, requesters=self.requesters,
                         request_of=self._request_record,
                         existing=lambda kind, rid, m: self._by(kind, rid).get(m))

    def _refuse(self, rec: Record, refusal: Refusal, source: str) -> None:
        """Count a refusal once per record (sync re-offers it), log it, and flag equivocation."""
        if self._refused.get(rec.record_id) == refusal.reason:
            return
        if len(self._refused) >= 100_000:  # bounded: forget the oldest
            self._refused.pop(next(iter(self._refused)))
        self._refused[rec.record_id] = refusal.reason
        self.store.incr(f"rejected_{refusal.reason}")
        level = logging.INFO if refusal.deferred else logging.WARNING
        log.log(level, "record refused", extra={"event": "record_refused", "reason": refusal.reason,
                                                "source": source, "signer": rec.signer, "detail": refusal.detail})
        if refusal.reason == "equivocation":
            p = rec.predicate
            key = f"flag:{p['request_id']}:{p['model_id']}"
            flags = self.store.get_state(key) or {"signer": rec.signer, "kind": rec.kind, "ignored": []}
            if rec.record_id not in flags["ignored"]:
                flags["ignored"].append(rec.record_id)
                self.store.put_state(key, flags)
                self.store.incr("equivocations")

    def flags(self, request_id: str, model_id: str) -> str:
        """A readable note when the owner of ``model_id`` equivocated on ``request_id``, else ""."""
        f = self.store.get_state(f"flag:{request_id}:{model_id}")
        if not f:
            return ""
        return (f"flagged: owner {f['signer'][:16]}... sent {len(f['ignored'])} conflicting {f['kind']}(s) for "
                f"{model_id}; only the first is used")

    def kick(self) -> None:
        self._kick.set()

    async def publish_record(self, rec: Record) -> None:
        """Store our own record, then hand it to ``publish`` with the gRPC addresses that should get it
        at once by direct push (None: every known peer) and whether to gossip it; anti-entropy sync
        takes every record to everyone in the end."""
        self.ingest(rec.envelope, source="local")
        push_to, gossip = self._delivery(rec)
        try:
            await self.publisher.publish(rec.envelope, push_to, gossip)
        except Exception as exc:  # gossip is best effort; anti-entropy sync repairs any gap
            log.warning("gossip publish failed", extra={"event": "publish_failed", "detail": str(exc)})

    def _delivery(self, rec: Record) -> tuple[list[str] | None, bool]:
        """(push to, gossip?) for our own record. Models and requests concern every peer (any of them
        may own an affected model): pushed to all. Only a request is also gossiped: it must reach
        every owner at once, also one we have not heard of yet; a new model can wait for
        anti-entropy there. Gossip is dear: py-libp2p spends about 5 ms of CPU per pubsub RPC and
        GossipSub delivers each message about D=6 times to every peer, so gossiping N models to N
        peers costs O(N^2 D) RPCs (measured: gossiped hellos alone kept an idle 32-peer network on 2
        cores saturated; RESULTS.md, Scale). A request
        makes an announcement per discovery model and a receipt and a new version per affected
        model; an announcement is pushed to the owners of the models that inherit from ours (the
        only ones that merge it), a receipt to the requester only (it completes the request there),
        a later model version to no one, and anti-entropy sync spreads all of them to everyone."""
        if rec.kind == "announcement":
            heirs = {self.view.owner(d) for d in self.view.umig.descendants(rec.predicate["model_id"])}
            return sorted({self.peers[k] for k in heirs if k in self.peers}), False
        if rec.kind == "receipt":
            request = self._request_record(rec.predicate["request_id"])
            addr = self.peers.get(request.signer) if request is not None else None
            return ([addr] if addr else []), False
        if rec.kind == "lineage":
            return (None if rec.predicate["version"] == 1 else []), False
        return None, True

    # -- admin: publish -----------------------------------------------------------------------
    async def publish_model(self, *, model_id: str, weights: bytes, data: bytes, parents: list[ParentRef],
                            labels: list[int], architecture: dict[str, Any],
                            head_tensors: list[str], format: str = "zoo",
                            head: str = "") -> tuple[str, str, list[dict[str, Any]]]:
        """Register a model version: check everything, compute F_j (Eq. 4) now, sign the lineage
        record, then store weights, data and F_j and publish the record. Returns (model digest,
        record id, the parents as signed: model_id, relation, digest, version). Any bad input raises
        AgentError before anything is stored or signed."""
        if not is_valid_id(model_id):
            raise AgentError(f"model id {model_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (max 128)")
        if self.view.owner(model_id) is not None:
            raise AgentError(f"model {model_id!r} already exists; unlearning creates new versions itself")
        if model_id in self._publishing:  # the check above cannot see a publication still computing F_j
            raise AgentError(f"model {model_id!r} is being published by another call")
        self._publishing.add(model_id)
        try:
            return await self._publish_model(model_id, weights, data, parents, labels, architecture, head_tensors,
                                             format, head)
        except PublishError as exc:
            raise AgentError(str(exc)) from None
        finally:
            self._publishing.discard(model_id)

    async def _publish_model(self, model_id: str, weights: bytes, data: bytes, parents: list[ParentRef],
                             labels: list[int], architecture: dict[str, Any],
                             head_tensors: list[str], format: str = "zoo",
                             head: str = "") -> tuple[str, str, list[dict[str, Any]]]:
        check_parents(model_id, [(p.model_id, p.relation) for p in parents])
        parent_refs, used = [], []
        for p in parents:
            digest, version = self._parent_version(p)
            parent_refs.append({"model_id": p.model_id, "digest": digest, "relation": p.relation})
            used.append({"model_id": p.model_id, "relation": p.relation, "digest": digest, "version": version})
        # Any format (fiun_peer.formats): artifact, head and data checked, nothing run from the artifact.
        pub = await run_in_worker(functools.partial(prepare_publication, format, weights, architecture, data,
                                                    head=head, labels=labels))
        model, x, y, names = pub.classifier, pub.inputs, pub.y, pub.head_tensors
        if head_tensors and list(head_tensors) != names:
            raise AgentError(f"head tensors {list(head_tensors)[:8]} are not the model's last Linear layer {names}")
        present = sorted({int(c) for c in y.tolist()})
        if labels and not set(present) <= set(labels):
            raise AgentError(f"data holds labels {present} outside the declared label set {sorted(labels)}")
        labels = sorted(set(labels) if labels else present)
        s = self.defaults
        mf = await run_in_worker(node_model_fisher, model, x, y, s)
        try:
            check_fisher(mf, name="model Fisher")
        except ValueError as exc:  # finite weights and data can still overflow
            raise AgentError(f"these weights give an unusable model Fisher on this data: {exc}") from None
        mf_bytes = to_bytes(mf)
        weights_digest, data_digest, mf_digest = (sha256_hex(b) for b in (weights, data, mf_bytes))
        # Signed before anything is stored: a record that cannot be built (e.g. over the size limit)
        # leaves nothing behind.
        rec = build_lineage(self.identity, model_id=model_id, model_digest=weights_digest, version=1,
                            parents=parent_refs, relation=parents[0].relation if parents else "root",
                            labels=labels, head_tensors=names, architecture=pub.architecture,
                            model_fisher_digests={settings_key(s): mf_digest})
        if self.view.owner(model_id) is not None:  # a lineage arrived while F_j was computed
            raise AgentError(f"model {model_id!r} already exists; unlearning creates new versions itself")
        self.store.put_blob(weights, kind="weights")
        self.store.put_blob(data, kind="data")
        self.store.put_blob(mf_bytes, kind="model_fisher")
        with self.store.transaction():
            # The data digest stays here: lineage records no longer name it (docs/security.md).
            self.store.put_state(f"model:{model_id}", {"digest": weights_digest, "version": 1,
                                                       "original": weights_digest, "data": data_digest})
            versions.remember(self.store, model_id, pub.spec)   # how to load it again (format, head)
        self._models.put(model_id, weights_digest, model)
        await self.publish_record(rec)
        log.info("model published", extra={"event": "model_published", "model": model_id,
                                            "digest": weights_digest,
                                            "parents": [f"{u['model_id']}@v{u['version']}" for u in used]})
        return weights_digest, rec.record_id, used

    def _parent_version(self, parent: ParentRef) -> tuple[str, int]:
        """(digest, version) of the parent version a new model names: the one given by digest or
        number, or the parent's current version as this peer knows it. Versions are the parent's
        receipt chain (fiun_peer.lineage): one this peer has not seen yet cannot be named."""
        pid = parent.model_id
        if self.view.owner(pid) is None:
            raise NotReady(f"unknown parent model {pid[:128]!r}: its lineage has not reached this peer "
                           "(yet?); publish it first, or retry (fiun-peer admin publish --wait-parents)")
        chain = self.view.versions.get(pid)
        if not chain:
            raise NotReady(f"parent model {pid!r} is not in this peer's lineage graph yet: "
                           f"{', '.join(self._waiting_for_parents(pid))} not here yet (--wait-parents retries)")
        known = ", ".join(f"v{i} {d[:12]}" for i, d in enumerate(chain, 1))
        if parent.version < 0:
            raise AgentError(f"parent {pid!r}: version must be >= 1 (0: by digest, or the current one)")
        if parent.digest:
            if not is_digest(parent.digest):
                raise AgentError(f"parent {pid!r}: digest must be 64 lowercase hex characters (sha256), "
                                 f"got {parent.digest[:80]!r}")
            version = self.view.version_of(pid, parent.digest)
            if version is None:
                raise NotReady(f"unknown version {parent.digest[:12]} of parent {pid!r}: this peer knows "
                               f"{known} (a later version is known once the receipt that made it arrives; "
                               "--wait-parents retries)")
            if parent.version and parent.version != version:
                raise AgentError(f"parent {pid!r}: {parent.digest[:12]} is version {version}, not {parent.version}")
            return parent.digest, version
        if parent.version:
            if parent.version > len(chain):
                raise NotReady(f"unknown version {parent.version} of parent {pid!r}: this peer knows {known} "
                               "(a later version is known once the receipt that made it arrives; --wait-parents "
                               "retries)")
            return chain[parent.version - 1], parent.version
        return chain[-1], len(chain)

    def _waiting_for_parents(self, model_id: str) -> list[str]:
        rec = self.view.waiting.get(model_id)
        return parents_missing(self.view, rec) if rec is not None else ["its record"]

    def _load_version(self, lineage: Record, digest: str, to_change: bool = False) -> Classifier:
        """One of our own models at version ``digest``, in whatever format it was published (from the
        cache of loaded models; ``to_change``: taken out of it, since the caller changes it)."""
        m = lineage.predicate["model_id"]
        load_it = functools.partial(versions.load_version, self.store, m, lineage.predicate["architecture"], digest)
        return (self._models.take if to_change else self._models.get)(m, digest, load_it)

    def _data_digest(self, model_id: str) -> str:
        """Our own data for ``model_id``: local state, or (stores from before issue 14) the digest its
        version-1 lineage record still names."""
        st = self.store.get_state(f"model:{model_id}") or {}
        digest = st.get("data") or self.view.first[model_id].predicate.get("data_digest")
        if not digest or not self.store.has_blob(digest):
            raise AgentError(f"this peer does not hold the training data of {model_id}")
        return digest

    # -- admin: export ------------------------------------------------------------------------
    def export_target(self, model_id: str, *, digest: str = "", version: int = 0) -> tuple[str, int]:
        """(digest, version) of a version of a model this peer owns, for AdminService.ExportModel:
        the current one, or the one named by ``digest`` or ``version``. The caller reads the blob
        (outside the trio loop) after :func:`fiun_peer.policy.blob_refusal` allows it."""
        if not is_valid_id(model_id):
            raise AgentError(f"model id {model_id[:200]!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (max 128)")
        if digest and not is_digest(digest):
            raise AgentError(f"digest must be 64 lowercase hex characters (sha256), got {digest[:80]!r}")
        if digest and version:
            raise AgentError("give a digest or a version, not both")
        if version < 0:
            raise AgentError(f"version must be >= 1 (0: the current one), got {version}")
        me = self.identity.public_key_hex
        current = self.store.get_state(f"model:{model_id}")
        if self.view.owner(model_id) != me or current is None:
            raise NotFound(f"this peer does not own model {model_id!r}; export it from its owner's peer")
        versions = {r.predicate["version"]: r.subject_digest for r in self.store.records("lineage")
                    if r.predicate["model_id"] == model_id and r.signer == me}
        versions[current["version"]] = current["digest"]   # applied, its lineage record maybe not out yet
        if digest:
            found = [v for v, d in versions.items() if d == digest]
            if not found:
                raise NotFound(f"{digest} is not a version of model {model_id}")
            return digest, max(found)
        if version:
            if version not in versions:
                raise NotFound(f"model {model_id} has no version {version} (current: {current['version']})")
            return versions[version], version
        return current["digest"], current["version"]

    # -- admin: request -----------------------------------------------------------------------
    async def request_unlearning(self, forget_labels: list[int], settings: dict[str, Any] | None,
                                 request_id: str = "", *, force: bool = False) -> tuple[str, str, list[str], list[str]]:
        """Sign and spread a request to forget ``forget_labels``. Labels that no model of the lineage
        this peer knows holds are refused (NotReady) unless ``force``: a request for models that
        join later is a real case, but more often a typo that would be signed and kept by every peer."""
        if not forget_labels or any(c < 0 for c in forget_labels):
            raise AgentError("forget_labels must be a non-empty list of non-negative labels")
        s = settings_from(settings)
        request_id = request_id or uuid.uuid4().hex[:16]
        if not is_valid_id(request_id):
            raise AgentError(f"request id {request_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
        existing = self._request_record(request_id)
        if existing is not None:  # idempotent by id
            if existing.predicate["forget_labels"] != sorted(set(forget_labels)):
                raise AgentError(f"request {request_id} already exists with labels "
                                 f"{existing.predicate['forget_labels']}")
            rec = existing
        else:
            unheld = sorted(set(forget_labels) - {c for m in self.view.umig.models() for c in self.view.umig.labels(m)})
            if unheld and not force:
                raise NotReady(f"no model in the lineage this peer knows ({len(self.view.umig)} models) holds "
                               f"label{'s' if len(unheld) > 1 else ''} {', '.join(map(str, unheld[:20]))}; "
                               "nothing would be unlearned. To ask models that join later to forget it, "
                               "request it with force (fiun-peer admin unlearn --force)")
            rec = build_request(self.identity, request_id=request_id, forget_labels=forget_labels,
                                settings=s.to_dict())
            await self.publish_record(rec)
        cf = rec.predicate["forget_labels"]
        return (request_id, rec.record_id, self.view.umig.unlearning_subgraph(cf, request_id),
                self.view.umig.discovery_nodes(cf))

    def _request_record(self, request_id: str) -> Record | None:
        return self._index().get(("request", request_id), {}).get("")

    # -- views --------------------------------------------------------------------------------
    def _by(self, kind: str, request_id: str) -> dict[str, Record]:
        """Records of ``kind`` for a request, keyed by model id (first stored one wins)."""
        return dict(self._index().get((kind, request_id), {}))

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

    def request_progress(self, request_id: str) -> tuple[Record, list[Progress], bool]:
        """Every model that descends from the data to forget by the graph's shape, and how far its
        owner is: applied, or not affected (a version it derives from had applied the request
        already), each with its owner's receipt; done when every one has a receipt."""
        req = self._request_record(request_id)
        if req is None:
            raise NotFound(f"unknown request {request_id!r}")
        cf = req.predicate["forget_labels"]
        g = self.view.umig
        announced, receipts = self._by("announcement", request_id), self._by("receipt", request_id)
        discovery = set(g.discovery_nodes(cf))
        mine = set(self.view.owned_by(self.identity.public_key_hex))
        out = []
        for m in g.unlearning_subgraph(cf):
            anc = g.discovery_ancestors(m, cf, request_id)
            st = self.store.get_state(f"req:{request_id}:{m}") or {}
            p = Progress(m, m in discovery, "pending", discovery_ancestors=anc,
                         received_at=st.get("received_at", 0.0), applied_at=st.get("applied_at", 0.0))
            if m in receipts:
                r = receipts[m]
                p.state, p.old_digest, p.new_digest = receipt_state(r.predicate), r.predicate["old_digest"], \
                    r.predicate["new_digest"]
                p.reason = r.predicate.get("reason", "")
                p.applied_at = p.applied_at or self.arrived.get(r.record_id, 0.0)
            elif not anc:
                p.why_pending = (f"not affected: {self._why_not_affected(m, cf, request_id)}; waiting for "
                                 f"{m} ({self._owner_note(m, 'still deciding')}) to say so in a receipt")
            else:
                if m in announced:
                    p.state = "announced"
                missing = [d for d in anc if d not in announced]
                if m in mine and st.get("why"):
                    p.why_pending = st["why"]
                elif missing:
                    p.why_pending = self._waiting_for(missing)
                else:
                    p.why_pending = (f"all Fishers announced; waiting for {m} ({self._owner_note(m, 'still applying')})"
                                     " to apply and send a receipt")
            note = self.flags(request_id, m)
            if note:
                p.why_pending = f"{p.why_pending}; {note}" if p.why_pending else note
            out.append(p)
        return req, out, all(p.state in (APPLIED, NOT_AFFECTED) for p in out)

    def _why_not_affected(self, m: str, cf: list[int], request_id: str) -> str:
        """Why model ``m``, which descends from a discovery model by the graph's shape, is outside
        request ``request_id``: for each parent, the version it derived from had applied the request,
        or the parent is outside it too."""
        g = self.view.umig
        parts = []
        for p in g.parents(m):
            if p not in g.unlearning_subgraph(cf):
                continue
            if not g.carries(p, m, request_id):
                v = g.parent_version(p, m)
                parts.append(f"{p} v{v} ({self.view.versions[p][v - 1][:12]}), a version that had applied it")
            else:
                parts.append(f"{p}, which is not affected either")
        why = f"derived from {'; '.join(parts)}; its own data holds none of {cf}"
        return why if len(why) <= MAX_REASON else why[:MAX_REASON - 3] + "..."   # an aggregate of many

    # -- the reconcile loop -------------------------------------------------------------------
    async def run(self, *, interval: float = 2.0, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(interval):
                await self._kick.wait()
            self._kick = trio.Event()
            try:
                await self.reconcile()
            except Exception:  # keep serving; the next pass retries
                log.exception("reconcile failed", extra={"event": "reconcile_failed"})

    async def reconcile(self) -> None:
        async with self._work_lock:
            requests = [slot[""] for (kind, _), slot in self._index().items() if kind == "request"]
            if not requests:  # leave the view alone: every new model drops it, and a rebuild per
                return        # pass made 64 arriving lineage records cost 10x the CPU
            owned = self.view.owned_by(self.identity.public_key_hex)
            for req in requests:
                for m in owned:
                    if (req.predicate["request_id"], m) not in self._settled:
                        await self._advance(req, m)

    async def _advance(self, req: Record, m: str) -> None:
        rid, cf = req.predicate["request_id"], req.predicate["forget_labels"]
        key = f"req:{rid}:{m}"
        st = self.store.get_state(key)
        if st and st.get("state") in (APPLIED, NOT_AFFECTED):
            if not self._has_own("receipt", rid, m):   # crashed before the receipt went out
                await self._send_receipt(rid, m, st)
            self._settled.add((rid, m))
            return
        g = self.view.umig
        if m not in g.unlearning_subgraph(cf):
            # For good: a model's parents and every ancestor's labels are fixed by their first versions.
            self._settled.add((rid, m))
            return
        if m not in g.unlearning_subgraph(cf, rid):
            # Descends from the data only through versions that had applied this request already: it
            # says so in a receipt, so the request completes and the requester sees why. For good
            # too: the versions its edges name, and what each had applied, never change.
            await self._not_affected(rid, m, cf, st)
            return
        try:
            s = settings_from(req.predicate["settings"])
        except AgentError as exc:
            self._set_why(key, st, f"request has invalid settings: {exc}")
            return
        if st is None:
            model_state = self.store.get_state(f"model:{m}")
            st = {"state": "pending", "base": model_state["digest"], "received_at": time.time()}
            self.store.put_state(key, st)
            log.info("request received", extra={"event": "request_received", "request": rid, "model": m})
        lineage = self.view.first[m]
        if m in g.discovery_nodes(cf) and not self._has_own("announcement", rid, m):
            await self._announce(rid, m, cf, st["base"], lineage, s)
            return
        announced = self._by("announcement", rid)
        anc = g.discovery_ancestors(m, cf, rid)
        missing = [d for d in anc if d not in announced]
        if missing:
            self._set_why(key, st, self._waiting_for(missing))
            return
        # All at once: an aggregate (FL's global model) descends from every client, and one pull
        # after another would put N round trips on the request's critical path. Merged in `anc`
        # order below, whatever order they arrive in.
        got: dict[str, tuple[dict[str, torch.Tensor] | None, str]] = {}

        async def pull(d: str) -> None:
            async with self._pull_slots:
                got[d] = await self._get_fisher(announced[d])

        async with trio.open_nursery() as nursery:
            for d in anc:
                nursery.start_soon(pull, d)
        fishers = []
        for d in anc:
            blob, why = got[d]
            if blob is None:
                self._set_why(key, st, why)
                return
            fishers.append(blob)
        # Check every pulled Fisher against our own head *before* any arithmetic: a hostile or broken
        # discovery peer can announce a well-formed blob of the wrong shape, dtype or sign.
        own = await self._model_fisher(m, self.store.get_state(f"model:{m}")["digest"], s)
        for d, fisher in zip(anc, fishers, strict=True):
            problem = fisher_problem(fisher, own)
            if problem:
                ann = announced[d]
                digest = ann.predicate["fisher_digest"]
                why = (f"Fisher of {d} ({digest[:12]}, announced by {ann.signer[:16]}...) "
                       f"is unusable: {problem}; model {m} left untouched")
                counted = st.get("fisher_invalid", [])
                if digest in counted:  # counted and logged once per (request, model, Fisher)
                    self._set_why(key, st, why)
                    return
                with self.store.transaction():
                    self.store.incr("fisher_invalid")
                    self.store.put_state(key, {**st, "why": why, "fisher_invalid": [*counted, digest]})
                log.warning("fisher refused", extra={"event": "fisher_invalid", "request": rid, "model": d,
                                                     "signer": ann.signer, "detail": problem})
                return
        faults.point("after_pull", f"{rid}:{m}")
        await self._apply(rid, m, st, lineage, fishers, s, cf)

    def _has_own(self, kind: str, rid: str, m: str) -> bool:
        r = self._by(kind, rid).get(m)
        return r is not None and r.signer == self.identity.public_key_hex

    def _set_why(self, key: str, st: dict | None, why: str) -> None:
        st = dict(st or {"state": "pending", "received_at": time.time()})
        if st.get("why") != why:
            st["why"] = why
            self.store.put_state(key, st)

    async def _announce(self, rid: str, m: str, cf: list[int], base: str, lineage: Record,
                        s: FIUnSettings) -> None:
        """Discovery node: Eq. 3 on our own forget data, stored content-addressed, announced."""
        model = await run_in_worker(self._load_version, lineage, base)
        x, y = load_dataset_bytes(self.store.get_blob(self._data_digest(m)))
        t0 = time.perf_counter()
        fhat = await run_in_worker(node_unlearning_fisher, model, x, y, cf, s)
        digest = self.store.put_blob(to_bytes(fhat), kind="fisher")  # served once announced
        rec = build_announcement(self.identity, request_id=rid, model_id=m, model_digest=base,
                                 fisher_digest=digest, shapes={k: list(v.shape) for k, v in fhat.items()},
                                 estimator=s.estimator, labels=sorted(set(cf) & set(lineage.predicate["labels"])))
        faults.point("before_announce", f"{rid}:{m}")
        await self.publish_record(rec)
        log.info("fisher announced", extra={"event": "fisher_announced", "request": rid, "model": m,
                                            "digest": digest, "seconds": round(time.perf_counter() - t0, 4)})

    async def _get_fisher(self, ann: Record) -> tuple[dict[str, torch.Tensor] | None, str]:
        """The announced Fisher, from our store or pulled from any peer that has it (digest verified)."""
        digest = ann.predicate["fisher_digest"]
        data = self.store.get_blob(digest) if self.store.has_blob(digest) and self.store.verify_blob(digest) else None
        errors = []
        if data is None:
            targets = [self.peers[ann.signer]] if ann.signer in self.peers else []
            targets += [t for k, t in sorted(self.peers.items()) if k != ann.signer]
            if not targets:
                return None, f"no known peer to fetch Fisher {digest[:12]} of {ann.predicate['model_id']} from"
            for target in targets:
                try:
                    data = await trio.to_thread.run_sync(self.fetcher.fetch, target, digest)
                    break
                except Exception as exc:  # try the next provider
                    self.store.incr("fisher_fetch_failed")
                    errors.append(f"{target}: {exc}")
            if data is None:
                return None, f"could not fetch Fisher of {ann.predicate['model_id']}: {'; '.join(errors)}"
            self.store.put_blob(data, kind="fisher")
            self.store.incr("fisher_bytes_pulled", len(data))
        try:
            fisher = from_bytes(data, what="Fisher")
        except TensorFileError as exc:
            return None, str(exc)
        shapes = {k: list(v.shape) for k, v in fisher.items()}
        if shapes != ann.predicate["shapes"]:
            return None, f"Fisher of {ann.predicate['model_id']} has shapes {shapes}, announced {ann.predicate['shapes']}"
        return fisher, ""

    async def _model_fisher(self, m: str, version_digest: str, s: FIUnSettings) -> dict[str, torch.Tensor]:
        """F_j (Eq. 4) of the version ``version_digest`` of own model ``m``, for these settings: on
        that version's weights and the owner's data. Version 1's, for the peer's default settings,
        was computed at publish and is named in its lineage record; any other (a later version, a
        request with other settings) is computed on first use and cached per (version, settings).
        (Before issue 18 the cache was ``mf:<model>`` by settings alone, whatever version it was
        computed on; it is not read.)"""
        key = settings_key(s)
        first = self.view.first[m]
        named = first.predicate["model_fisher_digests"].get(key) if version_digest == first.subject_digest else None
        cache = self.store.get_state(f"mf:{m}:{version_digest}") or {}
        digest = named or cache.get(key)
        if digest and self.store.has_blob(digest):
            return from_bytes(self.store.get_blob(digest), what="model Fisher")
        model = await run_in_worker(self._load_version, first, version_digest)
        x, y = load_dataset_bytes(self.store.get_blob(self._data_digest(m)))
        mf = await run_in_worker(node_model_fisher, model, x, y, s)
        cache[key] = self.store.put_blob(to_bytes(mf), kind="model_fisher")
        self.store.put_state(f"mf:{m}:{version_digest}", cache)
        return mf

    async def _apply(self, rid: str, m: str, st: dict, lineage: Record, fishers: list, s: FIUnSettings,
                     cf: list[int]) -> None:
        """Eqs. 5-6 on our model, the new version written atomically, then a receipt."""
        # The current version, not st["base"]: a request applied since this one arrived must not be undone.
        base = self.store.get_state(f"model:{m}")["digest"]
        t0 = time.perf_counter()
        model = await run_in_worker(self._load_version, lineage, base, True)   # it gets the new head
        mf = await self._model_fisher(m, base, s)
        try:
            new_head = await run_in_worker(functools.partial(apply_fiun_head, forget_labels=cf), model, mf, fishers, s)
        except ValueError as exc:  # e.g. a Fisher of the wrong shape or with NaN: model untouched
            self._set_why(f"req:{rid}:{m}", st, f"cannot apply: {exc}")
            self.store.incr("apply_failed")
            return
        # Head-only: the new head and a manifest are stored, the digest is the whole artifact's.
        new = await run_in_worker(versions.new_version, model, new_head)
        versions.record(self.store, m, new)
        new_digest = new.digest
        self._models.put(m, new_digest, model)   # the next request starts from it
        faults.point("after_new_blob", f"{rid}:{m}")
        model_state = self.store.get_state(f"model:{m}")
        version = model_state["version"] + 1
        now = time.time()
        done = {**st, "state": APPLIED, "old": base, "new": new_digest, "version": version, "applied_at": now,
                "why": ""}
        with self.store.transaction():  # model version and request state move together, or not at all
            self.store.put_state(f"model:{m}", {**model_state, "digest": new_digest, "version": version})
            faults.point("apply_mid_txn", f"{rid}:{m}")
            self.store.put_state(f"req:{rid}:{m}", done)
        log.info("unlearning applied", extra={"event": "applied", "request": rid, "model": m,
                                              "old": base, "new": new_digest})
        if self.on_applied is not None:
            self.on_applied(time.perf_counter() - t0, now - st.get("received_at", now))
        faults.point("before_receipt", f"{rid}:{m}")
        await self._send_receipt(rid, m, done)

    async def _not_affected(self, rid: str, m: str, cf: list[int], st: dict | None) -> None:
        """Model ``m`` is outside request ``rid`` (see ``_advance``): record it and say so, signed."""
        digest = self.store.get_state(f"model:{m}")["digest"]
        reason = self._why_not_affected(m, cf, rid)
        st = {**(st or {"received_at": time.time()}), "state": NOT_AFFECTED, "old": digest, "new": digest,
              "reason": reason, "why": ""}
        self.store.put_state(f"req:{rid}:{m}", st)
        log.info("not affected", extra={"event": "not_affected", "request": rid, "model": m, "detail": reason})
        await self._send_receipt(rid, m, st)
        self._settled.add((rid, m))

    async def _send_receipt(self, rid: str, m: str, st: dict) -> None:
        """The receipt for a settled (request, model) pair, from its stored state; after applying,
        the new version's lineage record first (it carries no model Fisher: that of a later version
        is computed when a request needs it, see ``_model_fisher``)."""
        if st["state"] == NOT_AFFECTED:
            await self.publish_record(build_receipt(self.identity, request_id=rid, model_id=m, old_digest=st["old"],
                                                    new_digest=st["new"], state=NOT_AFFECTED, reason=st["reason"]))
            return
        first = self.view.first[m].predicate
        receipt = build_receipt(self.identity, request_id=rid, model_id=m, old_digest=st["old"], new_digest=st["new"])
        lineage = build_lineage(self.identity, model_id=m, model_digest=st["new"], version=st["version"],
                                parents=first["parents"], relation=first["relation"], labels=first["labels"],
                                head_tensors=first["head_tensors"], architecture=first["architecture"],
                                model_fisher_digests={}, previous_digest=st["old"])
        await self.publish_record(lineage)
        faults.point("after_lineage", f"{rid}:{m}")
        await self.publish_record(receipt)

    # -- peers --------------------------------------------------------------------------------
    # The address book (fiun_peer.address_book) holds them; these views keep the agent's own code
    # and its callers as they were.
    @property
    def peers(self) -> dict[str, str]:
        """Public key hex -> gRPC address of every known peer."""
        return self.book.peers

    @property
    def heard(self) -> dict[str, float]:
        return self.book.heard

    @property
    def lost(self) -> dict[str, float]:
        return self.book.lost

    def _owner_note(self, m: str, doing: str) -> str:
        """Who must act for model ``m`` and what this peer knows of them, for "why pending" texts:
        "offline" only for an owner this peer has not heard from directly for a while."""
        key = self.view.owner(m) or ""
        if key == self.identity.public_key_hex:
            return f"this peer, {doing}"
        return self.book.describe(key, doing)

    def awaited_peers(self, progress: list[Progress]) -> list[str]:
        """gRPC addresses of the other peers whose records a request still waits for (the owners of
        its models without a receipt, discovery owners among them), for a watcher that wants their
        receipts now rather than at the next anti-entropy round."""
        keys = {self.view.owner(p.model_id) for p in progress if p.state not in ("applied", "not_affected")}
        return self.book.addresses_of(k for k in keys if k)

    def contacted(self, address: str, *, answered: bool) -> None:
        """A call to the peer at gRPC ``address`` (e.g. a sync) answered, or failed."""
        self.book.contacted(address, answered=answered)

    def _waiting_for(self, missing: list[str]) -> str:
        notes = ", ".join(f"{d} ({self._owner_note(d, 'still computing')})" for d in missing)
        return f"waiting for Fisher announcements from {notes}"
