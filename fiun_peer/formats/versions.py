"""Versions that store only what changed: a new version keeps the new head, not a new model.

Unlearning changes the head only (Eq. 6), so version 2, 3, ... of a model store the new head
tensors (a small safetensors blob, content-addressed, of kind ``weights``: its owner's only) and a
manifest in the owner's store (``fiun_peer.state.Manifest``), that points at
the unchanged version-1 artifact. A 100 MB model unlearned ten times costs about 100 MB plus ten
heads on disk. A version's digest is still the sha256 of the *whole* artifact with that head (what
the receipt names and ExportModel returns), so nothing about digests changes for other peers: the
owner computes it once when it writes the version and checks it again whenever it rebuilds the
artifact for an export. No backbone crosses the network for unlearning (only Fishers do).

What the owner's peer needs to load its model again (format, head, architecture, chunk size) is
its format's spec (``fiun_peer.state.spec``); models published before formats existed have none and
are zoo models described by their lineage record, stored whole.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .. import state
from ..state import manifest
from ..tensors import from_bytes, to_bytes
from . import load
from .base import Classifier


class VersionError(LookupError):
    """A version whose parts are missing or damaged in this store."""


def remember(store: Any, model_id: str, spec: Mapping[str, Any]) -> None:
    """Keep how to load ``model_id`` again (at publication, with its version 1)."""
    state.put_spec(store, model_id, dict(spec))


def spec_of(store: Any, model_id: str, record_architecture: Mapping[str, Any]) -> dict[str, Any]:
    return state.spec(store, model_id) or {"format": "zoo", "architecture": dict(record_architecture)}


def load_version(store: Any, model_id: str, record_architecture: Mapping[str, Any], digest: str) -> Classifier:
    """The model at version ``digest``: a whole stored artifact, or version 1's artifact with the
    version's head put in."""
    spec = spec_of(store, model_id, record_architecture)
    m = manifest(store, digest)
    if m is None:
        data = store.get_blob(digest)
        if data is None:
            raise VersionError(f"version {digest[:12]} of {model_id} is not in this peer's store")
        return load(spec, data)
    base, head = store.get_blob(m["artifact"]), store.get_blob(m["head"])
    if base is None or head is None:
        raise VersionError(f"version {digest[:12]} of {model_id}: its artifact or head is missing from this store")
    classifier = load(spec, base)
    classifier.set_head(from_bytes(head, what="head"))
    return classifier


@dataclass(frozen=True)
class NewVersion:
    digest: str        # sha256 of the whole artifact with the new head
    head: bytes        # the new head tensors, safetensors


def new_version(classifier: Classifier, head: Mapping[str, Tensor]) -> NewVersion:
    """Put ``head`` into ``classifier`` and digest the whole artifact (torch work: a worker thread)."""
    classifier.set_head(head)
    return NewVersion(hashlib.sha256(classifier.artifact()).hexdigest(), to_bytes(dict(head)))


def record(store: Any, model_id: str, version: NewVersion) -> str:
    """Store a new version's head and its manifest; returns the head blob's digest. Idempotent."""
    artifact = state.model(store, model_id)["original"]
    head_digest = store.put_blob(version.head, kind="weights")
    state.put_manifest(store, version.digest, {"model": model_id, "artifact": artifact, "head": head_digest})
    return head_digest


def read_artifact(store: Any, model_id: str, record_architecture: Mapping[str, Any], digest: str) -> bytes:
    """The whole artifact of a version, stored or rebuilt from its parts and checked against its
    digest (for ExportModel: the owner gets exactly what the receipt names)."""
    if manifest(store, digest) is None:
        data = store.get_blob(digest)
        if data is None:
            raise VersionError(f"version {digest[:12]} of {model_id} is missing from this peer's store")
        return data
    data = load_version(store, model_id, record_architecture, digest).artifact()
    if hashlib.sha256(data).hexdigest() != digest:
        raise VersionError(f"version {digest[:12]} of {model_id} rebuilds to other bytes (damaged store?)")
    return data


def blob_digests(store: Any, digest: str) -> list[str]:
    """The blobs a version is made of (for access checks): itself, or its artifact and head."""
    m = manifest(store, digest)
    return [digest] if m is None else [m["artifact"], m["head"]]


#: Bytes of model tensors the owner's peer keeps loaded (least recently used first out).
MODEL_CACHE_BYTES = 1 << 30


class ModelCache:
    """Loaded models of this peer, by (model id, version digest), least recently used evicted past
    ``max_bytes`` of tensors. Loading a model (e.g. ResNet-18: parse 45 MB, build, fill) cost more
    than the unlearning itself, and a discovery model used to be loaded twice per request (for
    Eq. 3, then for Eqs. 5-6), every model once more per request: now the model built at
    publication serves version 1, and the model a request just changed serves the next version.

    A model that is about to change (Eqs. 5-6 put a new head into it) is taken out with
    :meth:`take`, so no one reads it half-changed, and put back under its new digest."""

    def __init__(self, max_bytes: int = MODEL_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._models: OrderedDict[tuple[str, str], tuple[Classifier, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _size(c: Classifier) -> int:
        return sum(t.numel() * t.element_size() for t in c.state_dict().values())

    def put(self, model_id: str, digest: str, classifier: Classifier) -> None:
        size = self._size(classifier)
        with self._lock:
            self._models.pop((model_id, digest), None)
            if size > self.max_bytes:
                return
            self._models[(model_id, digest)] = (classifier, size)
            while sum(n for _, n in self._models.values()) > self.max_bytes:
                self._models.popitem(last=False)

    def get(self, model_id: str, digest: str, load_it: Callable[[], Classifier]) -> Classifier:
        """The model at ``digest`` (cached, or loaded with ``load_it`` and cached) for reading."""
        with self._lock:
            hit = self._models.get((model_id, digest))
            if hit is not None:
                self._models.move_to_end((model_id, digest))
                return hit[0]
        c = load_it()
        self.put(model_id, digest, c)
        return c

    def take(self, model_id: str, digest: str, load_it: Callable[[], Classifier]) -> Classifier:
        """The model at ``digest``, removed from the cache (its caller will change it)."""
        with self._lock:
            hit = self._models.pop((model_id, digest), None)
        return hit[0] if hit is not None else load_it()
