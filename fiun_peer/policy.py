"""Who may say what: the rules every peer applies on ingest, and which blobs leave the peer.

A record that verifies (``fiun_peer.records``) is still only *a claim by its signer*. These rules
decide whether the signer is entitled to make it, from the records a peer already holds:

- lineage: a model id belongs to the key that signed its version 1 (first claim a peer sees wins);
  later versions only from that key; a parent version it names must be one this peer knows (the
  parent's receipt chain, ``fiun_peer.lineage``), else it waits for it;
- unlearning request: only from an accepted requester (:class:`RequesterPolicy`);
- Fisher announcement: only from the owner of a *discovery* model of that request (the model's own
  labels meet the request's forget labels), once per (request, model);
- receipt: only from the model's owner, once per (request, model); a ``not_affected`` receipt only
  for a model that this peer's lineage graph, too, leaves outside the request.

A refusal is *deferred* when it may become acceptable as more records arrive (the model's lineage or
the request has not reached this peer yet); anti-entropy sync offers the record again later.

Which stored blobs leave the peer, and to whom, is decided here too (:func:`blob_refusal`), in one
place for the blob service and the admin export. Whether a pulled Fisher fits a model's head is a
per-model step (``fiun_peer.unlearn.fisher_problem``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .lineage import LineageView
from .records import NOT_AFFECTED, Record, is_digest, receipt_state

# Counter suffixes (``rejected_<reason>``) of authorization refusals.
REFUSALS = ("not_owner", "not_requester", "not_discovery", "unknown_subject", "equivocation", "conflict",
            "unknown_parent_version", "contradicts_lineage")


@dataclass(frozen=True)
class Refusal:
    reason: str          # one of REFUSALS
    detail: str
    deferred: bool = False  # may be accepted once more records arrive

    def __post_init__(self) -> None:
        if self.reason not in REFUSALS:
            raise ValueError(f"unknown refusal reason {self.reason!r}")


class PolicyError(ValueError):
    """A policy setting is unusable (e.g. a requester key that is not a public key)."""


@dataclass(frozen=True)
class RequesterPolicy:
    """Which keys may request unlearning. Default: network members (any key that owns a model in
    the lineage) and this peer's own key; ``extra`` adds keys (``--requester``), e.g. a data
    subject's or a regulator's key that owns no model."""

    extra: frozenset[str] = frozenset()

    @classmethod
    def of(cls, keys: Iterable[str]) -> RequesterPolicy:
        keys = [k.strip().lower() for k in keys]
        bad = [k for k in keys if not is_digest(k)]  # an Ed25519 public key: 64 lowercase hex
        if bad:
            raise PolicyError(f"requester keys must be Ed25519 public keys, 64 hex characters; got {bad[0]!r}")
        return cls(frozenset(keys))

    def accepts(self, key: str, view: LineageView, own_key: str) -> bool:
        return key == own_key or key in self.extra or any(r.signer == key for r in view.first.values())


def authorize(rec: Record, *, view: LineageView, own_key: str, requesters: RequesterPolicy,
              request_of: Callable[[str], Record | None],
              existing: Callable[[str, str, str], Record | None]) -> Refusal | None:
    """None when ``rec``'s signer may say this. ``request_of(request_id)`` and ``existing(kind,
    request_id, model_id)`` look up records already held."""
    p = rec.predicate
    if rec.kind == "lineage":
        return _lineage(rec, view)
    if rec.kind == "request":
        if not requesters.accepts(rec.signer, view, own_key):
            return Refusal("not_requester", f"key {rec.signer[:16]}... is not an accepted requester (it owns "
                                            "no model this peer knows and is not configured with --requester)",
                           deferred=True)  # its lineage may still be on the way
        held = request_of(p["request_id"])
        if held is not None and held.record_id != rec.record_id:
            return Refusal("conflict", f"request id {p['request_id']} is already taken by another request")
        return None
    # announcement or receipt: about one model and one request
    model, rid = p["model_id"], p["request_id"]
    owner = view.owner(model)
    if owner is None or model not in view.umig:
        return Refusal("unknown_subject", f"model {model} is not (yet) in this peer's lineage", deferred=True)
    if owner != rec.signer:
        return Refusal("not_owner", f"{rec.kind} for {model} not signed by its owner")
    req = request_of(rid)
    if req is None:
        return Refusal("unknown_subject", f"request {rid} has not reached this peer yet", deferred=True)
    if rec.kind == "announcement" and not (view.umig.labels(model) & set(req.predicate["forget_labels"])):
        return Refusal("not_discovery", f"{model} is not a discovery model of request {rid}: its own labels "
                                        f"hold none of {req.predicate['forget_labels']}")
    if rec.kind == "receipt" and receipt_state(p) == NOT_AFFECTED \
            and model in view.umig.unlearning_subgraph(req.predicate["forget_labels"], rid):
        ancestors = view.umig.discovery_ancestors(model, req.predicate["forget_labels"], rid)
        return Refusal("contradicts_lineage", f"receipt says {model} is not affected by request {rid}, but it "
                                              f"descends from the data to forget through {', '.join(ancestors)}")
    held = existing(rec.kind, rid, model)
    if held is not None and held.record_id != rec.record_id:
        return Refusal("equivocation", f"owner of {model} already sent a different {rec.kind} for request "
                                       f"{rid} ({held.record_id[:12]}); this one ({rec.record_id[:12]}) is ignored")
    return None


def _lineage(rec: Record, view: LineageView) -> Refusal | None:
    model, version = rec.predicate["model_id"], rec.predicate["version"]
    first = view.first.get(model)
    if version == 1:
        if first is not None and first.record_id == rec.record_id:
            return None
        if first is None:
            return _parent_versions(rec, view)
        if first.signer != rec.signer:
            return Refusal("not_owner", f"model {model} is already owned by another key")
        return Refusal("conflict", f"model {model} already has a different version 1")
    if first is None:
        return Refusal("unknown_subject", f"version {version} of {model} before its version 1", deferred=True)
    if first.signer != rec.signer:
        return Refusal("not_owner", f"version {version} of {model} not signed by its owner")
    return None


def _parent_versions(rec: Record, view: LineageView) -> Refusal | None:
    """A new model naming a version of a parent in the graph that is not one this peer knows waits
    for it (the parent's receipt may be on its way); a parent not in the graph yet is the view's
    to wait for (``fiun_peer.lineage``), since its versions cannot be judged before it arrives."""
    for p in rec.predicate["parents"]:
        pid = p["model_id"]
        if pid in view.umig and view.version_of(pid, p["digest"]) is None:
            return Refusal("unknown_parent_version",
                           f"{rec.predicate['model_id']} derives from {pid} at {p['digest'][:12]}, which is not a "
                           f"version of {pid} this peer knows (its versions: "
                           f"{', '.join(d[:12] for d in view.versions[pid])})", deferred=True)
    return None


# -- blobs ----------------------------------------------------------------------------------------

#: Who may read a blob of each kind (``fiun_peer.store.BLOB_KINDS``): "peer" is any caller of
#: FisherService.Fetch that the peer services admit (everyone, or the --allow-peers keys); "owner" is
#: the holder of this peer's admin credential (AdminService.ExportModel). Model Fishers are not
#: shared today; sharing them with peers is adding "peer" to their set. Training data goes to no one.
BLOB_READERS: dict[str, frozenset[str]] = {
    "fisher": frozenset({"peer"}),        # and only when a stored announcement names it
    "model_fisher": frozenset(),          # not shared today
    "weights": frozenset({"owner"}),
    "data": frozenset(),                  # never leaves the peer
}
READERS = ("peer", "owner")


def blob_refusal(kinds: Iterable[str], reader: str, *, announced: bool) -> str:
    """Why a blob stored with ``kinds`` may not go to ``reader`` ("peer" or "owner"), or "" when it
    may. A blob stored under several kinds is served only when every one of them allows it (the
    most private kind wins); one without a kind is never served."""
    if reader not in READERS:
        raise ValueError(f"unknown blob reader {reader!r}")
    kinds = sorted(set(kinds))
    if not kinds:
        return "this peer does not serve blobs of unknown kind"
    for kind in kinds:
        if reader not in BLOB_READERS.get(kind, frozenset()):
            who = {"peer": "to peers", "owner": "through the admin API"}[reader]
            return f"this peer does not serve {kind.replace('_', ' ')} blobs {who}"
    if "fisher" in kinds and reader == "peer" and not announced:
        return "this peer serves only Fishers named in a Fisher announcement"
    return ""
