"""The peer's behaviour: one Agent per peer, the one owner of peer state, on the trio loop.

Flow (docs/architecture.md): publish -> request -> locate -> discovery Fishers announced -> every
affected peer pulls, merges, dampens -> receipts. The Agent wires the parts together and is what
the daemon, the admin service and the tests call:

- ``fiun_peer.ledger``: records in (verify, authorize, store, defer, refuse), the indexes and the
  lineage view;
- ``fiun_peer.reconcile``: the state machine that advances every (request, own model) pair;
- ``fiun_peer.publication``: publishing own models, naming parent versions, finding exports;
- ``fiun_peer.own_models``: own models loaded, their data and model Fishers (Eq. 4);
- ``fiun_peer.progress``: how far a request is, and why it waits;
- here: sending our own records (whom to push each one to), the peers we know (the address book)
  and the thin public methods. All arithmetic is ``fiun_peer.core`` (via ``fiun_peer.unlearn``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import trio

from .address_book import AddressBook
from .core.fiun import FIUnSettings, SettingsError
from .errors import AgentError, NotFound, NotReady
from .identity import Identity
from .ledger import Ledger, ModelEntry
from .lineage import LineageView
from .own_models import Export, OwnModels
from .policy import RequesterPolicy
from .progress import Progress, request_progress
from .publication import ModelPublisher, ParentRef
from .reconcile import Reconciler
from .records import Record, build_request, is_valid_id
from .seams import BlobFetcher, NoNetwork, Publisher
from .store import Store

# Importable from here too (the admin service, the CLI and tests did before they had modules).
__all__ = ["Agent", "AgentError", "NotFound", "NotReady", "ParentRef", "Progress"]

log = logging.getLogger("fiun_peer.agent")


class Agent:
    """One peer's behaviour, its parts wired together. Call its methods on the trio thread only
    (except :meth:`read_export`)."""

    def __init__(self, identity: Identity, store: Store, *, publisher: Publisher | None = None,
                 fetcher: BlobFetcher | None = None, book: AddressBook | None = None,
                 defaults: FIUnSettings | None = None, requesters: RequesterPolicy | None = None) -> None:
        self.identity = identity
        self.store = store
        # The network (fiun_peer.seams; the daemon passes fiun_peer.delivery's; None: none): our own
        # records out (see publish_record), Fisher blobs in (digest verified).
        self.publisher: Publisher = publisher if publisher is not None else NoNetwork()
        self.fetcher: BlobFetcher = fetcher if fetcher is not None else NoNetwork()
        # The known peers and when each was last heard from: the daemon's, shared with membership.
        self.book = book if book is not None else AddressBook(identity.public_key_hex)
        self.ledger = Ledger(identity, store, requesters or RequesterPolicy(), heard=self.book.heard_from,
                             stored=self.kick)
        self.models = OwnModels(self.ledger)
        self.publication = ModelPublisher(identity, self.ledger, self.models, defaults or FIUnSettings(),
                                          publish=self.publish_record)
        self.reconciler = Reconciler(identity, self.ledger, self.models, publish=self.publish_record,
                                     pull=self._pull_fisher, waiting_for=self._waiting_for)

    # -- records in ---------------------------------------------------------------------------
    @property
    def view(self) -> LineageView:
        return self.ledger.view

    def ingest(self, envelope: bytes, *, source: str) -> tuple[bool, str, str]:
        """Verify and store one record (:meth:`fiun_peer.ledger.Ledger.ingest`): (accepted, record id,
        reason); never raises for bad input."""
        return self.ledger.ingest(envelope, source=source)

    def ingest_many(self, envelopes: list[bytes], *, source: str) -> int:
        """Ingest a Sync reply in one store transaction; returns how many records were new."""
        return self.ledger.ingest_many(envelopes, source=source)

    # -- the reconcile loop (fiun_peer.reconcile) ---------------------------------------------
    def kick(self) -> None:
        self.reconciler.kick()

    async def run(self, *, interval: float = 2.0,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.reconciler.run(interval=interval, task_status=task_status)

    async def reconcile(self) -> None:
        await self.reconciler.reconcile()

    @property
    def on_applied(self) -> Callable[[float, float], None] | None:
        """on_applied(apply seconds, seconds since the request was received): the metrics hook."""
        return self.reconciler.on_applied

    @on_applied.setter
    def on_applied(self, hook: Callable[[float, float], None] | None) -> None:
        self.reconciler.on_applied = hook

    # -- records out --------------------------------------------------------------------------
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
            return self.book.addresses_of(heirs), False
        if rec.kind == "receipt":
            request = self.ledger.request(rec.predicate["request_id"])
            addr = self.book.peers.get(request.signer) if request is not None else None
            return ([addr] if addr else []), False
        if rec.kind == "lineage":
            return (None if rec.predicate["version"] == 1 else []), False
        return None, True

    async def _pull_fisher(self, ann: Record) -> tuple[bytes | None, str]:
        """The bytes of an announced Fisher from any peer that has it, its announcer first (the fetch
        verifies the digest); None and why when none gave them."""
        digest = ann.predicate["fisher_digest"]
        peers = self.book.peers
        targets = [peers[ann.signer]] if ann.signer in peers else []
        targets += [t for k, t in sorted(peers.items()) if k != ann.signer]
        if not targets:
            return None, f"no known peer to fetch Fisher {digest[:12]} of {ann.predicate['model_id']} from"
        errors = []
        for target in targets:
            try:
                return await trio.to_thread.run_sync(self.fetcher.fetch, target, digest), ""
            except Exception as exc:  # try the next provider
                self.store.incr("fisher_fetch_failed")
                errors.append(f"{target}: {exc}")
        return None, f"could not fetch Fisher of {ann.predicate['model_id']}: {'; '.join(errors)}"

    # -- admin --------------------------------------------------------------------------------
    async def publish_model(self, *, model_id: str, weights: bytes, data: bytes, parents: list[ParentRef],
                            labels: list[int], architecture: dict[str, Any],
                            head_tensors: list[str], format: str = "zoo",
                            head: str = "") -> tuple[str, str, list[dict[str, Any]]]:
        """Publish an own model (:meth:`fiun_peer.publication.ModelPublisher.publish_model`): (model
        digest, record id, the parents as signed)."""
        return await self.publication.publish_model(
            model_id=model_id, weights=weights, data=data, parents=parents, labels=labels,
            architecture=architecture, head_tensors=head_tensors, format=format, head=head)

    def export_target(self, model_id: str, *, digest: str = "", version: int = 0) -> tuple[str, int]:
        """(digest, version) of a version of a model this peer owns: the current one, or the one
        named by ``digest`` or ``version`` (then :meth:`read_export`, off the trio loop)."""
        return self.publication.export_target(model_id, digest=digest, version=version)

    def architecture(self, model_id: str) -> dict[str, Any]:
        """The architecture a model's version-1 lineage record names."""
        return self.ledger.view.first[model_id].predicate["architecture"]

    def read_export(self, model_id: str, digest: str, version: int, architecture: dict[str, Any]) -> Export:
        """The whole artifact of an own version, read (and rebuilt) off the trio loop: it reads only
        the store, which serves any thread (docs/architecture.md)."""
        return self.models.read_export(model_id, digest, version, architecture)

    # -- admin: request -----------------------------------------------------------------------
    async def request_unlearning(self, forget_labels: list[int], settings: dict[str, Any] | None,
                                 request_id: str = "", *, force: bool = False) -> tuple[str, str, list[str], list[str]]:
        """Sign and spread a request to forget ``forget_labels``. Labels that no model of the lineage
        this peer knows holds are refused (NotReady) unless ``force``: a request for models that
        join later is a real case, but more often a typo that would be signed and kept by every peer."""
        if not forget_labels or any(c < 0 for c in forget_labels):
            raise AgentError("forget_labels must be a non-empty list of non-negative labels")
        try:
            s = FIUnSettings.from_dict(settings)
        except SettingsError as exc:
            raise AgentError(str(exc)) from exc
        request_id = request_id or uuid.uuid4().hex[:16]
        if not is_valid_id(request_id):
            raise AgentError(f"request id {request_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
        existing = self.ledger.request(request_id)
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

    def request_progress(self, request_id: str) -> tuple[Record, list[Progress], bool]:
        """How far each model the request reaches is, and whether it is done
        (:func:`fiun_peer.progress.request_progress`)."""
        return request_progress(self.ledger, request_id, owner_note=self._owner_note, waiting_for=self._waiting_for)

    def lineage(self) -> list[ModelEntry]:
        """The lineage graph as this peer knows it, model by model (AdminService.ListLineage)."""
        return self.ledger.lineage()

    def receipts(self, request_id: str = "") -> list[Record]:
        """The receipts this peer holds, of every request or of one (AdminService.ListReceipts)."""
        return self.ledger.receipts(request_id)

    def own_models(self) -> list[str]:
        """The ids of the models this peer owns."""
        return self.ledger.view.owned_by(self.identity.public_key_hex)

    def count(self, name: str) -> None:
        """Add one to the persistent counter ``name`` (e.g. an admin call's outcome)."""
        self.store.incr(name)

    # -- peers (the address book, fiun_peer.address_book, holds them) -------------------------
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

    def _waiting_for(self, missing: list[str]) -> str:
        notes = ", ".join(f"{d} ({self._owner_note(d, 'still computing')})" for d in missing)
        return f"waiting for Fisher announcements from {notes}"
