"""This peer's own models: loading a version, its training data, its model Fishers, its export.

Owns the cache of loaded models (``fiun_peer.formats.versions.ModelCache``) and the model Fishers
computed after publication (state ``mf:``, ``fiun_peer.state``). The versions themselves are
written by reconcile (``fiun_peer.formats.versions.record``) and published by publication; see
docs/architecture.md. Eq. 4's arithmetic is ``fiun_peer.core`` (via ``fiun_peer.unlearn``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from . import state
from .bridge import run_in_worker
from .core.fiun import FIUnSettings
from .errors import AgentError, NotFound
from .formats import Classifier, versions
from .ledger import Ledger
from .policy import blob_refusal
from .records import Record
from .tensors import from_bytes, load_dataset_bytes, to_bytes
from .unlearn import node_model_fisher


@dataclass(frozen=True)
class Export:
    """A version's whole artifact as AdminService.ExportModel hands it out."""
    weights: bytes
    format: str
    architecture: dict[str, Any]


class OwnModels:
    """The models this peer owns, as loaded torch models and stored blobs."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger, self.store = ledger, ledger.store
        self._cache = versions.ModelCache()      # our models, loaded, by (id, version digest)

    def load(self, lineage: Record, digest: str, to_change: bool = False) -> Classifier:
        """One of our own models at version ``digest``, in whatever format it was published (from the
        cache of loaded models; ``to_change``: taken out of it, since the caller changes it).
        Blocking torch work: call it in a worker thread."""
        m = lineage.predicate["model_id"]
        load_it = functools.partial(versions.load_version, self.store, m, lineage.predicate["architecture"], digest)
        return (self._cache.take if to_change else self._cache.get)(m, digest, load_it)

    def keep(self, model_id: str, digest: str, model: Classifier) -> None:
        """``model`` is version ``digest`` of ``model_id``: the next request starts from it."""
        self._cache.put(model_id, digest, model)

    def data_digest(self, model_id: str) -> str:
        """Our own data for ``model_id``: local state, or (stores from before issue 14) the digest its
        version-1 lineage record still names."""
        st = state.model(self.store, model_id) or {}
        digest = st.get("data") or self._ledger.view.first[model_id].predicate.get("data_digest")
        if not digest or not self.store.has_blob(digest):
            raise AgentError(f"this peer does not hold the training data of {model_id}")
        return digest

    async def model_fisher(self, m: str, version_digest: str, s: FIUnSettings) -> dict[str, torch.Tensor]:
        """F_j (Eq. 4) of the version ``version_digest`` of own model ``m``, for these settings: on
        that version's weights and the owner's data. Version 1's, for the peer's default settings,
        was computed at publish and is named in its lineage record; any other (a later version, a
        request with other settings) is computed on first use and cached per (version, settings).
        (Before issue 18 the cache was ``mf:<model>`` by settings alone, whatever version it was
        computed on; it is not read.)"""
        key = s.model_fisher_key()
        first = self._ledger.view.first[m]
        named = first.predicate["model_fisher_digests"].get(key) if version_digest == first.subject_digest else None
        cache = state.model_fishers(self.store, m, version_digest)
        digest = named or cache.get(key)
        if digest and self.store.has_blob(digest):
            return from_bytes(self.store.get_blob(digest), what="model Fisher")
        model = await run_in_worker(self.load, first, version_digest)
        x, y = load_dataset_bytes(self.store.get_blob(self.data_digest(m)))
        mf = await run_in_worker(node_model_fisher, model, x, y, s)
        cache[key] = self.store.put_blob(to_bytes(mf), kind="model_fisher")
        state.put_model_fishers(self.store, m, version_digest, cache)
        return mf

    def read_export(self, model_id: str, digest: str, version: int, architecture: dict[str, Any]) -> Export:
        """The whole artifact of version ``digest`` (number ``version``; see :meth:`fiun_peer.agent.Agent.export_target`)
        with its format, when :func:`fiun_peer.policy.blob_refusal` lets the owner have its blobs.
        Safe off the trio loop (it reads the store only): a head-only version is rebuilt, which
        takes long for a large model. The caller checks the bytes against ``digest``."""
        for part in versions.blob_digests(self.store, digest):   # a head-only version: its artifact and head
            refusal = blob_refusal(self.store.blob_kinds(part), "owner", announced=False)
            if refusal:  # e.g. a store migrated from before blob kinds that could not name this blob
                raise NotFound(f"version {version} of {model_id} ({digest[:12]}): {refusal}")
        try:
            weights = versions.read_artifact(self.store, model_id, architecture, digest)
        except versions.VersionError as exc:
            raise NotFound(f"version {version} of {model_id}: {exc}") from None
        spec = versions.spec_of(self.store, model_id, architecture)
        return Export(weights, spec["format"], spec.get("architecture") or {})
