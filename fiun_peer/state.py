"""The peer's own state in the store, typed: the one module that spells its keys.

The store keeps JSON objects under string keys (``fiun_peer.store``); these are the ones the agent
writes and metrics and the formats read (docs/architecture.md):

=================================  ==============================================================
``model:<model id>``               :class:`ModelState`: an own model's current version, its data
``req:<request id>:<model id>``    :class:`RequestState`: how far an own model is with a request
``mf:<model id>:<version digest>`` model Fisher (Eq. 4) blob digests of one version, by settings
                                   (``FIUnSettings.model_fisher_key``)
``flag:<request id>:<model id>``   :class:`Flags`: records ignored because their signer equivocated
``ver:<version digest>``           :class:`Manifest`: the parts of a head-only version
``fmt:<model id>``                 how to load an own model again (its format's spec)
=================================  ==============================================================

Request and model ids cannot hold ``:`` (``fiun_peer.records.is_valid_id``), so a key splits back
into them. Stores from before issue 18 also hold ``mf:<model id>`` (by settings alone); nothing
reads it.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, cast

MODEL, REQUEST, MODEL_FISHERS, FLAG, VERSION, SPEC = "model:", "req:", "mf:", "flag:", "ver:", "fmt:"


class StateStore(Protocol):
    """What these accessors need of ``fiun_peer.store.Store``."""

    def get_state(self, key: str) -> dict[str, Any] | None: ...
    def put_state(self, key: str, value: dict[str, Any]) -> None: ...
    def states(self, prefix: str = "") -> dict[str, dict[str, Any]]: ...


class ModelState(TypedDict, total=False):
    digest: str        # the current version's digest
    version: int       # its number (1 at publication)
    original: str      # version 1's artifact, which head-only versions build on
    data: str          # the owner's training data blob (never leaves the peer); absent before issue 14


class RequestState(TypedDict, total=False):
    state: str                   # pending | applied | not_affected
    base: str                    # the version the request found
    received_at: float
    why: str                     # why still pending, in words ("" once settled)
    old: str                     # settled: the version before and after
    new: str
    version: int                 # applied: the new version's number
    applied_at: float
    reason: str                  # not_affected: why, as the receipt says
    fisher_invalid: list[str]    # Fisher digests found unusable (counted once each)


class Flags(TypedDict):
    signer: str          # who equivocated
    kind: str            # on which kind of record
    ignored: list[str]   # the record ids ignored


class Manifest(TypedDict):
    model: str
    artifact: str        # version 1's whole artifact
    head: str            # this version's head tensors


def model(store: StateStore, model_id: str) -> ModelState | None:
    return cast(ModelState | None, store.get_state(MODEL + model_id))


def put_model(store: StateStore, model_id: str, st: ModelState) -> None:
    store.put_state(MODEL + model_id, dict(st))


def models(store: StateStore) -> dict[str, ModelState]:
    """Every own model's state, by model id, in key order."""
    return {key[len(MODEL):]: cast(ModelState, v) for key, v in store.states(MODEL).items()}


def request(store: StateStore, request_id: str, model_id: str) -> RequestState | None:
    return cast(RequestState | None, store.get_state(f"{REQUEST}{request_id}:{model_id}"))


def put_request(store: StateStore, request_id: str, model_id: str, st: RequestState) -> None:
    store.put_state(f"{REQUEST}{request_id}:{model_id}", dict(st))


def requests(store: StateStore) -> dict[tuple[str, str], RequestState]:
    """Every (request id, own model id) pair this peer has a state for."""
    out = {}
    for key, v in store.states(REQUEST).items():
        rid, _, m = key[len(REQUEST):].partition(":")
        out[(rid, m)] = cast(RequestState, v)
    return out


def model_fishers(store: StateStore, model_id: str, version_digest: str) -> dict[str, str]:
    """Model Fisher blobs computed for one version of an own model, by settings key (none: {})."""
    return dict(store.get_state(f"{MODEL_FISHERS}{model_id}:{version_digest}") or {})


def put_model_fishers(store: StateStore, model_id: str, version_digest: str, digests: dict[str, str]) -> None:
    store.put_state(f"{MODEL_FISHERS}{model_id}:{version_digest}", dict(digests))


def flags(store: StateStore, request_id: str, model_id: str) -> Flags | None:
    return cast(Flags | None, store.get_state(f"{FLAG}{request_id}:{model_id}"))


def put_flags(store: StateStore, request_id: str, model_id: str, f: Flags) -> None:
    store.put_state(f"{FLAG}{request_id}:{model_id}", dict(f))


def manifest(store: StateStore, digest: str) -> Manifest | None:
    """The parts of version ``digest`` when it is head-only (None: a whole stored artifact)."""
    return cast(Manifest | None, store.get_state(VERSION + digest))


def put_manifest(store: StateStore, digest: str, m: Manifest) -> None:
    store.put_state(VERSION + digest, dict(m))


def spec(store: StateStore, model_id: str) -> dict[str, Any] | None:
    return store.get_state(SPEC + model_id)


def put_spec(store: StateStore, model_id: str, spec: dict[str, Any]) -> None:
    store.put_state(SPEC + model_id, dict(spec))
