"""The network's lineage graph as every peer sees it, derived from signed records alone.

Pure over records: the agent rebuilds it whenever a model's first lineage record arrives (and folds
later versions in with ``add_version``), so there is one owner of truth (the store).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .core.umig import UMIG, UMIGError
from .records import Record


@dataclass
class LineageView:
    umig: UMIG = field(default_factory=UMIG)
    latest: dict[str, Record] = field(default_factory=dict)   # model id -> newest lineage record
    first: dict[str, Record] = field(default_factory=dict)    # model id -> version 1 (names the owner)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def owner(self, model_id: str) -> str | None:
        rec = self.first.get(model_id)
        return rec.signer if rec else None

    def digest(self, model_id: str) -> str | None:
        rec = self.latest.get(model_id)
        return rec.subject_digest if rec else None

    def owned_by(self, public_key: str) -> list[str]:
        return [m for m in self.umig.models() if self.owner(m) == public_key]


def build_view(lineage_records: Iterable[Record]) -> LineageView:
    """Fold lineage records (any order) into the graph. The first version's signer owns a model id;
    later versions by another key are ignored. Edges come from the first version (unlearning does
    not change who a model inherits from)."""
    view = LineageView()
    recs = sorted(lineage_records, key=lambda r: (r.predicate["version"], r.record_id))
    for r in recs:
        mid = r.predicate["model_id"]
        if r.predicate["version"] == 1:
            if mid in view.first and view.first[mid].record_id != r.record_id:
                view.rejected.append((r.record_id, f"model {mid} already published by another record"))
                continue
            view.first[mid] = r
            view.latest[mid] = r
        else:
            add_version(view, r)
    # Add nodes parents-first; a model whose parents are unknown yet waits until they arrive.
    pending = dict(view.first)
    while pending:
        progressed = False
        for mid, r in list(pending.items()):
            parents = [p["model_id"] for p in r.predicate["parents"]]
            if all(p in view.umig for p in parents):
                view.umig.add_model(mid, r.predicate["labels"])
                for p in r.predicate["parents"]:
                    try:
                        view.umig.add_edge(p["model_id"], mid, p["relation"])
                    except UMIGError as exc:
                        view.rejected.append((r.record_id, str(exc)))
                del pending[mid]
                progressed = True
        if not progressed:
            break
    return view


def add_version(view: LineageView, record: Record) -> None:
    """Fold a later version (2, 3, ...) of a known model into ``view`` in place: it moves the model's
    latest digest and leaves the graph alone (edges come from the first version). The agent calls
    this as such records arrive (one per model per request) instead of rebuilding the view, which
    would cost O(models) each time; ``build_view`` folds them the same way."""
    mid, version = record.predicate["model_id"], record.predicate["version"]
    if mid in view.first and record.signer == view.first[mid].signer:
        if version > view.latest[mid].predicate["version"]:
            view.latest[mid] = record
    else:
        view.rejected.append((record.record_id, f"version {version} of {mid} not by its owner"))
