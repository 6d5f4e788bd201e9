"""The network's lineage graph as every peer sees it, derived from signed records alone.

Pure over records: the agent rebuilds it whenever a model's first lineage record arrives and folds
later records in (``add_version``, ``add_receipt``), so there is one owner of truth (the store).

**Versions.** A model's versions, as the graph knows them, are the chain of its owner's receipts
from version 1's digest: a receipt of request R that moves the model from version v's digest to a
new one makes that digest version v + 1, made by applying R. The chain is what lets a child name the
parent version it derived from by digest, and every peer decide the same way whether that version
had already applied a request (``fiun_peer.core.umig``). Later-version lineage records carry the
same digests but not which request made them; they move ``latest`` (what ``ListLineage`` labels
come from) and nothing else.

A model enters the graph once its parents are in it *and* every parent version it names is a known
version of that parent; until then it waits in ``waiting`` (its record is stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .core.umig import UMIG, UMIGError
from .records import Record, receipt_state


@dataclass
class LineageView:
    umig: UMIG = field(default_factory=UMIG)
    latest: dict[str, Record] = field(default_factory=dict)   # model id -> newest lineage record
    first: dict[str, Record] = field(default_factory=dict)    # model id -> version 1 (names the owner)
    # model id -> digests of its versions 1, 2, ... (the receipt chain; only for models in the graph)
    versions: dict[str, list[str]] = field(default_factory=dict)
    # model id -> {old digest: (new digest, request id)}: the owner's applied receipts, first one wins
    steps: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    waiting: dict[str, Record] = field(default_factory=dict)  # version 1 records not in the graph yet

    def owner(self, model_id: str) -> str | None:
        rec = self.first.get(model_id)
        return rec.signer if rec else None

    def digest(self, model_id: str) -> str | None:
        """The model's current version's digest as the graph knows it (None: not in the graph)."""
        chain = self.versions.get(model_id)
        return chain[-1] if chain else None

    def version_of(self, model_id: str, digest: str) -> int | None:
        """Which version of ``model_id`` has weights ``digest`` (None: no version this peer knows)."""
        chain = self.versions.get(model_id, [])
        return chain.index(digest) + 1 if digest in chain else None

    def owned_by(self, public_key: str) -> list[str]:
        return [m for m in self.umig.models() if self.owner(m) == public_key]


def build_view(lineage_records: Iterable[Record], receipts: Iterable[Record] = ()) -> LineageView:
    """Fold lineage records and receipts (any order) into the graph. The first version's signer owns
    a model id; later versions and receipts by another key are ignored. Edges come from the first
    version (unlearning does not change who a model inherits from, nor which version it came from)."""
    view = LineageView()
    recs = sorted(lineage_records, key=lambda r: (r.predicate["version"], r.record_id))
    for r in recs:
        mid = r.predicate["model_id"]
        if r.predicate["version"] == 1:
            if mid in view.first and view.first[mid].record_id != r.record_id:
                continue  # the model id is already published by another record: the first one stands
            view.first[mid] = r
            view.latest[mid] = r
            view.waiting[mid] = r
        else:
            add_version(view, r)
    for r in receipts:
        _add_step(view, r)
    _place_waiting(view)
    return view


def parents_missing(view: LineageView, record: Record) -> list[str]:
    """What keeps a version-1 record out of the graph: parents not in it, or parent versions it
    names that this peer does not know (yet). Empty: it can be placed."""
    out = []
    for p in record.predicate["parents"]:
        pid = p["model_id"]
        if pid not in view.umig:
            out.append(f"parent model {pid}")
        elif view.version_of(pid, p["digest"]) is None:
            out.append(f"version {p['digest'][:12]} of {pid}")
    return out


def _place_waiting(view: LineageView) -> None:
    """Add waiting models whose parents and parent versions are known, parents first."""
    progressed = True
    while view.waiting and progressed:
        progressed = False
        for mid, r in list(view.waiting.items()):
            if parents_missing(view, r):
                continue
            view.umig.add_model(mid, r.predicate["labels"])
            view.versions[mid] = [r.subject_digest]
            for p in r.predicate["parents"]:
                try:
                    view.umig.add_edge(p["model_id"], mid, p["relation"],
                                       view.version_of(p["model_id"], p["digest"]))
                except UMIGError:
                    pass  # an edge that would break the graph (e.g. a cycle) is left out
            del view.waiting[mid]
            _extend(view, mid)
            progressed = True


def _extend(view: LineageView, model_id: str) -> bool:
    """Follow the owner's receipts from the model's newest known version; True when it moved."""
    chain, steps, moved = view.versions[model_id], view.steps.get(model_id, {}), False
    while chain[-1] in steps:
        new, request_id = steps[chain[-1]]
        if new in chain:   # only a broken owner could loop back; stop rather than walk for ever
            break
        try:
            view.umig.add_version(model_id, request_id)
        except UMIGError:  # a request applied twice on one chain: the same
            break
        chain.append(new)
        moved = True
    return moved


def _add_step(view: LineageView, receipt: Record) -> None:
    p = receipt.predicate
    if receipt_state(p) != "applied" or p["old_digest"] == p["new_digest"]:
        return  # not_affected: no new version
    owner = view.owner(p["model_id"])
    if owner is not None and owner != receipt.signer:
        return  # a receipt for a model not by its owner moves nothing
    view.steps.setdefault(p["model_id"], {}).setdefault(p["old_digest"], (p["new_digest"], p["request_id"]))


def add_receipt(view: LineageView, receipt: Record) -> None:
    """Fold a receipt into ``view`` in place: an applied one may make the next version of its model
    known, and with it place children that were waiting for that version."""
    _add_step(view, receipt)
    mid = receipt.predicate["model_id"]
    if mid in view.versions and _extend(view, mid) and view.waiting:
        _place_waiting(view)


def add_version(view: LineageView, record: Record) -> None:
    """Fold a later version (2, 3, ...) of a known model into ``view`` in place: it moves the model's
    latest record and leaves the graph alone (versions come from receipts, edges from the first
    version). The agent calls this as such records arrive (one per model per request) instead of
    rebuilding the view, which would cost O(models) each time; ``build_view`` folds them the same way."""
    mid, version = record.predicate["model_id"], record.predicate["version"]
    if mid in view.first and record.signer == view.first[mid].signer:
        if version > view.latest[mid].predicate["version"]:
            view.latest[mid] = record
    # else: a later version not by the model's owner is ignored
