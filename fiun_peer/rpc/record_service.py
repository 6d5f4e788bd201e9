"""RecordService: anti-entropy sync of signed records, and pushing one record to a peer.

GossipSub drops bursts (rate limits, unhealthy meshes), so peers periodically Sync by record-id sets;
records are self-verifying, so the serving peer need not be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import grpc

from fiun_peer.rpc.channel import as_channel
from fiun_peer.rpc.generated.fiun.v1 import records_pb2, records_pb2_grpc
from fiun_peer.store import Store

# on_push(envelope bytes) -> (accepted, record_id, reason); the agent verifies, stores and gossips.
PushHandler = Callable[[bytes], tuple[bool, str, str]]


class RecordServicer(records_pb2_grpc.RecordServiceServicer):
    """Serves the records of a :class:`~fiun_peer.store.Store`; hands pushes to ``on_push``."""

    def __init__(self, store: Store, on_push: PushHandler) -> None:
        self._store = store
        self._on_push = on_push

    def Sync(self, request: records_pb2.SyncRequest,
             context: grpc.ServicerContext) -> Iterator[records_pb2.Envelope]:
        have = set(request.have_ids)
        for record in self._store.records():  # arrival order = oldest first
            if record.record_id not in have:
                yield records_pb2.Envelope(data=record.envelope)

    def Push(self, request: records_pb2.Envelope,
             context: grpc.ServicerContext) -> records_pb2.PushReply:
        accepted, record_id, reason = self._on_push(request.data)
        return records_pb2.PushReply(accepted=accepted, record_id=record_id, reason=reason)


def sync_records(target: grpc.Channel | str, have_ids: Iterable[str], *,
                 timeout: float = 30.0) -> list[bytes]:
    """Envelopes the peer at ``target`` holds and we lack, oldest first. Verify each before use."""
    with as_channel(target) as channel:
        stub = records_pb2_grpc.RecordServiceStub(channel)
        request = records_pb2.SyncRequest(have_ids=sorted(set(have_ids)))
        return [envelope.data for envelope in stub.Sync(request, timeout=timeout)]


def push_record(target: grpc.Channel | str, envelope: bytes, *,
                timeout: float = 10.0) -> tuple[bool, str, str]:
    """Push one envelope; returns the peer's ``(accepted, record_id, reason)``."""
    with as_channel(target) as channel:
        reply = records_pb2_grpc.RecordServiceStub(channel).Push(
            records_pb2.Envelope(data=envelope), timeout=timeout)
        return reply.accepted, reply.record_id, reply.reason
