"""How far a request is, model by model, and why it is not done yet, in words (docs/architecture.md).

Read-only: built from the ledger's records, lineage view and flags and from this peer's own request
state (``fiun_peer.state``); it decides nothing. Which models a request reaches is the graph's
(``fiun_peer.core.umig``); a model it reaches "by shape" only through parent versions that had
applied it already is ``not_affected`` (issue 18).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import state
from .errors import NotFound
from .ledger import Ledger
from .lineage import LineageView
from .records import APPLIED, MAX_REASON, NOT_AFFECTED, Record, receipt_state


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


def request_progress(ledger: Ledger, request_id: str, *, owner_note: Callable[[str, str], str],
                     waiting_for: Callable[[list[str]], str]) -> tuple[Record, list[Progress], bool]:
    """Every model that descends from the data to forget by the graph's shape, and how far its
    owner is: applied, or not affected (a version it derives from had applied the request
    already), each with its owner's receipt; done when every one has a receipt.

    ``owner_note(model, doing)`` says who must act for a model and what this peer knows of them;
    ``waiting_for(models)`` why Fisher announcements of those models are awaited (the address book's)."""
    req = ledger.request(request_id)
    if req is None:
        raise NotFound(f"unknown request {request_id!r}")
    cf = req.predicate["forget_labels"]
    view = ledger.view
    g = view.umig
    announced, receipts = ledger.by("announcement", request_id), ledger.by("receipt", request_id)
    discovery = set(g.discovery_nodes(cf))
    mine = set(view.owned_by(ledger.identity.public_key_hex))
    out = []
    for m in g.unlearning_subgraph(cf):
        anc = g.discovery_ancestors(m, cf, request_id)
        st = state.request(ledger.store, request_id, m) or {}
        p = Progress(m, m in discovery, "pending", discovery_ancestors=anc,
                     received_at=st.get("received_at", 0.0), applied_at=st.get("applied_at", 0.0))
        if m in receipts:
            r = receipts[m]
            p.state, p.old_digest, p.new_digest = receipt_state(r.predicate), r.predicate["old_digest"], \
                r.predicate["new_digest"]
            p.reason = r.predicate.get("reason", "")
            p.applied_at = p.applied_at or ledger.arrived.get(r.record_id, 0.0)
        elif not anc:
            p.why_pending = (f"not affected: {why_not_affected(view, m, cf, request_id)}; waiting for "
                             f"{m} ({owner_note(m, 'still deciding')}) to say so in a receipt")
        else:
            if m in announced:
                p.state = "announced"
            missing = [d for d in anc if d not in announced]
            if m in mine and st.get("why"):
                p.why_pending = st["why"]
            elif missing:
                p.why_pending = waiting_for(missing)
            else:
                p.why_pending = (f"all Fishers announced; waiting for {m} ({owner_note(m, 'still applying')})"
                                 " to apply and send a receipt")
        note = ledger.flags(request_id, m)
        if note:
            p.why_pending = f"{p.why_pending}; {note}" if p.why_pending else note
        out.append(p)
    return req, out, all(p.state in (APPLIED, NOT_AFFECTED) for p in out)


def why_not_affected(view: LineageView, m: str, cf: list[int], request_id: str) -> str:
    """Why model ``m``, which descends from a discovery model by the graph's shape, is outside
    request ``request_id``: for each parent, the version it derived from had applied the request,
    or the parent is outside it too. Cut to fit a receipt's reason."""
    g = view.umig
    parts = []
    for p in g.parents(m):
        if p not in g.unlearning_subgraph(cf):
            continue
        if not g.carries(p, m, request_id):
            v = g.parent_version(p, m)
            parts.append(f"{p} v{v} ({view.versions[p][v - 1][:12]}), a version that had applied it")
        else:
            parts.append(f"{p}, which is not affected either")
    why = f"derived from {'; '.join(parts)}; its own data holds none of {cf}"
    return why if len(why) <= MAX_REASON else why[:MAX_REASON - 3] + "..."   # an aggregate of many
