"""Publishing an own model, and naming its versions (docs/architecture.md).

Owns the publications still computing (so two calls cannot publish one id) and the rules for naming
a parent version: by digest, by number, or the parent's current one, from the parent's receipt
chain as this peer knows it (``fiun_peer.lineage``). A publication checks everything, computes the
model Fisher F_j (Eq. 4, ``fiun_peer.core`` via ``fiun_peer.unlearn``), signs the version-1 lineage
record and only then stores weights, data and F_j; bad input stores and signs nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import state
from .bridge import run_in_worker
from .core.fiun import FIUnSettings, check_fisher
from .errors import AgentError, NotFound, NotReady
from .formats import prepare as prepare_publication
from .formats import versions
from .identity import Identity
from .ledger import Ledger
from .lineage import parents_missing
from .own_models import OwnModels
from .records import Record, build_lineage, is_digest, is_valid_id, sha256_hex
from .tensors import to_bytes
from .unlearn import node_model_fisher
from .validate import PublishError, check_parents

log = logging.getLogger("fiun_peer.agent")


@dataclass(frozen=True)
class ParentRef:
    """A parent named at publish: which version the child derived from, by digest or by number
    (neither: the parent's current version as this peer knows it)."""
    model_id: str
    relation: str
    digest: str = ""
    version: int = 0


class ModelPublisher:
    """Publishes this peer's models and finds the versions of its own models to export.
    ``publish(record)`` stores and sends one of our records (``Agent.publish_record``)."""

    def __init__(self, identity: Identity, ledger: Ledger, models: OwnModels, defaults: FIUnSettings, *,
                 publish: Callable[[Record], Awaitable[None]]) -> None:
        self.identity, self._ledger, self._models, self.defaults = identity, ledger, models, defaults
        self.store = ledger.store
        self._publish = publish
        self._publishing: set[str] = set()       # model ids whose PublishModel is still computing

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
        if self._ledger.view.owner(model_id) is not None:
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
                            model_fisher_digests={s.model_fisher_key(): mf_digest})
        if self._ledger.view.owner(model_id) is not None:  # a lineage arrived while F_j was computed
            raise AgentError(f"model {model_id!r} already exists; unlearning creates new versions itself")
        self.store.put_blob(weights, kind="weights")
        self.store.put_blob(data, kind="data")
        self.store.put_blob(mf_bytes, kind="model_fisher")
        with self.store.transaction():
            # The data digest stays here: lineage records no longer name it (docs/security.md).
            state.put_model(self.store, model_id, {"digest": weights_digest, "version": 1,
                                                   "original": weights_digest, "data": data_digest})
            versions.remember(self.store, model_id, pub.spec)   # how to load it again (format, head)
        self._models.keep(model_id, weights_digest, model)
        await self._publish(rec)
        log.info("model published", extra={"event": "model_published", "model": model_id,
                                            "digest": weights_digest,
                                            "parents": [f"{u['model_id']}@v{u['version']}" for u in used]})
        return weights_digest, rec.record_id, used

    def _parent_version(self, parent: ParentRef) -> tuple[str, int]:
        """(digest, version) of the parent version a new model names: the one given by digest or
        number, or the parent's current version as this peer knows it. Versions are the parent's
        receipt chain (fiun_peer.lineage): one this peer has not seen yet cannot be named."""
        pid, view = parent.model_id, self._ledger.view
        if view.owner(pid) is None:
            raise NotReady(f"unknown parent model {pid[:128]!r}: its lineage has not reached this peer "
                           "(yet?); publish it first, or retry (fiun-peer admin publish --wait-parents)")
        chain = view.versions.get(pid)
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
            version = view.version_of(pid, parent.digest)
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
        rec = self._ledger.view.waiting.get(model_id)
        return parents_missing(self._ledger.view, rec) if rec is not None else ["its record"]

    def export_target(self, model_id: str, *, digest: str = "", version: int = 0) -> tuple[str, int]:
        """(digest, version) of a version of a model this peer owns, for AdminService.ExportModel:
        the current one, or the one named by ``digest`` or ``version``. The caller reads the blob
        (outside the trio loop, :meth:`OwnModels.read_export`)."""
        if not is_valid_id(model_id):
            raise AgentError(f"model id {model_id[:200]!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (max 128)")
        if digest and not is_digest(digest):
            raise AgentError(f"digest must be 64 lowercase hex characters (sha256), got {digest[:80]!r}")
        if digest and version:
            raise AgentError("give a digest or a version, not both")
        if version < 0:
            raise AgentError(f"version must be >= 1 (0: the current one), got {version}")
        me = self.identity.public_key_hex
        current = state.model(self.store, model_id)
        if self._ledger.view.owner(model_id) != me or current is None:
            raise NotFound(f"this peer does not own model {model_id!r}; export it from its owner's peer")
        known = {r.predicate["version"]: r.subject_digest for r in self.store.records("lineage")
                 if r.predicate["model_id"] == model_id and r.signer == me}
        known[current["version"]] = current["digest"]   # applied, its lineage record maybe not out yet
        if digest:
            found = [v for v, d in known.items() if d == digest]
            if not found:
                raise NotFound(f"{digest} is not a version of model {model_id}")
            return digest, max(found)
        if version:
            if version not in known:
                raise NotFound(f"model {model_id} has no version {version} (current: {current['version']})")
            return known[version], version
        return current["digest"], current["version"]
