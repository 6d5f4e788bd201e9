"""Signed test records over made-up digests: one builder for the tests that need a lineage graph
without real models (policy, fuzzing, pacing, reconcile)."""
from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from fiun_peer import records as R
from fiun_peer.identity import Identity


def d(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lineage(who: Identity, model: str, labels: list[int], parents: tuple[str, ...] = (), version: int = 1,
            digest: str | None = None, parent_versions: dict[str, int] | None = None) -> R.Record:
    """Version ``version`` of ``model`` (digest ``d(f"{model}-v{version}")``), fine-tuned from
    ``parents`` at their first versions (or those in ``parent_versions``), or a root."""
    at = parent_versions or {}
    return R.build_lineage(
        who, model_id=model, model_digest=digest or d(f"{model}-v{version}"), version=version,
        parents=[{"model_id": p, "digest": d(f"{p}-v{at.get(p, 1)}"), "relation": "finetune"} for p in parents],
        relation="finetune" if parents else "root", labels=labels, head_tensors=["head.weight", "head.bias"],
        architecture={"model": "mlp", "in_shape": [1, 8, 8], "num_classes": 10},
        model_fisher_digests={"empirical": d(f"{model}-mf")},
        previous_digest=None if version == 1 else d(f"{model}-v{version - 1}"))


ANNOUNCER = Identity.from_seed(bytes([9]) * 32, "announcer")


def serve_fisher(store, data: bytes, *, request_id: str = "r") -> str:
    """Put ``data`` in ``store`` as a Fisher named by a stored announcement, which is what the blob
    service serves to peers; returns its digest."""
    digest = store.put_blob(data, kind="fisher")
    store.add_record(R.build_announcement(ANNOUNCER, request_id=request_id, model_id="m", model_digest=d("m-v1"),
                                          fisher_digest=digest, shapes={"weight": [1]}, estimator="empirical",
                                          labels=[0]))
    return digest


class CallPublisher:
    """A :class:`fiun_peer.seams.Publisher` that hands each record to an async function
    ``fn(envelope, push_to, gossip)``, for tests that watch what the agent sends."""

    def __init__(self, fn: Callable[[bytes, list[str] | None, bool], Awaitable[None]]) -> None:
        self._fn = fn

    async def publish(self, envelope: bytes, push_to: list[str] | None, gossip: bool) -> None:
        await self._fn(envelope, push_to, gossip)
