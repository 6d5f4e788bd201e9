"""RecordService: anti-entropy sync of signed records, and pushing one record to a peer.

GossipSub drops bursts (rate limits, unhealthy meshes), so peers periodically Sync by record-id sets;
records are self-verifying, so the serving peer need not be trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc

from fiun_peer.records import is_digest
from fiun_peer.rpc.channel import as_channel
from fiun_peer.rpc.generated.fiun.v1 import records_pb2, records_pb2_grpc
from fiun_peer.store import Store

if TYPE_CHECKING:
    from fiun_peer.rpc.auth import ClientTLS

# on_push(envelope bytes) -> (accepted, record_id, reason); the agent verifies, stores and gossips.
PushHandler = Callable[[bytes], tuple[bool, str, str]]
# identify() -> PeerInfo fields (peer_id, public_key, name, p2p_addresses, grpc_address): the daemon's
# addresses are known only once it runs, so it supplies them.
IdentifyHandler = Callable[[], dict]
# on_hello(hello blob) of a caller of Sync: the agent checks it as it checks a gossiped hello.
HelloHandler = Callable[[bytes], None]
# peers() -> the hellos this peer holds (its own first), for RecordService.Peers.
PeersHandler = Callable[[], list[bytes]]
# A hello is a small JSON (addresses and a key); anything much larger is not one.
MAX_HELLO_BYTES = 16 * 1024
# More hellos than any network has peers is not a peer list (both ways: served and taken).
MAX_HELLOS = 10_000
# A Sync names what the caller holds; far more ids than any network has records is abuse, not sync.
MAX_HAVE_IDS = 1_000_000


class RecordServicer(records_pb2_grpc.RecordServiceServicer):
    """Serves the records of a :class:`~fiun_peer.store.Store`; hands pushes to ``on_push``."""

    def __init__(self, store: Store, on_push: PushHandler, identify: IdentifyHandler | None = None,
                 on_hello: HelloHandler | None = None, peers: PeersHandler | None = None) -> None:
        self._store = store
        self._on_push = on_push
        self._identify = identify
        self._on_hello = on_hello
        self._peers = peers

    def Sync(self, request: records_pb2.SyncRequest,
             context: grpc.ServicerContext) -> Iterator[records_pb2.Envelope]:
        if len(request.have_ids) > MAX_HAVE_IDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"have_ids lists {len(request.have_ids)} ids, at most {MAX_HAVE_IDS} allowed")
        bad = next((i for i in request.have_ids if not is_digest(i)), None)
        if bad is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"have_ids must be record ids (64 lowercase hex), got {bad[:80]!r}")
        if len(request.hello) > MAX_HELLO_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"hello is {len(request.hello)} bytes, at most {MAX_HELLO_BYTES} allowed")
        if request.hello and self._on_hello is not None:
            self._on_hello(request.hello)
        for envelope in self._store.envelopes_except(set(request.have_ids)):  # oldest first
            yield records_pb2.Envelope(data=envelope)

    def Push(self, request: records_pb2.Envelope,
             context: grpc.ServicerContext) -> records_pb2.PushReply:
        # Oversize, malformed or forged envelopes are the handler's to count and refuse (a reply with
        # accepted=false and the reason), not an RPC error: the caller learns exactly why.
        try:
            accepted, record_id, reason = self._on_push(request.data)
        except Exception as exc:  # e.g. the peer is shutting down: say so instead of crashing
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot take records now: {type(exc).__name__}: {exc}")
        return records_pb2.PushReply(accepted=accepted, record_id=record_id, reason=reason)

    def Peers(self, request: records_pb2.PeersRequest,
              context: grpc.ServicerContext) -> records_pb2.PeersReply:
        hellos = _ask(self._peers, context, absent="this server keeps no peer list", failing="no peer list now")
        return records_pb2.PeersReply(hellos=[h for h in hellos if h][:MAX_HELLOS])

    def Identify(self, request: records_pb2.IdentifyRequest,
                 context: grpc.ServicerContext) -> records_pb2.PeerInfo:
        # Failing, e.g. libp2p not up yet: the caller retries.
        info = _ask(self._identify, context, absent="this server does not identify itself",
                    failing="not ready to identify")
        return records_pb2.PeerInfo(**info)


def _ask(handler: Callable[[], object] | None, context: grpc.ServicerContext, *, absent: str, failing: str):
    """The daemon-supplied answer for an optional RPC: UNIMPLEMENTED without a handler, UNAVAILABLE
    (with the reason) when it fails, e.g. while the peer starts or shuts down."""
    if handler is None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, absent)
    try:
        return handler()
    except Exception as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, f"{failing}: {type(exc).__name__}: {exc}")


def known_hellos(target: grpc.Channel | str, *, timeout: float = 10.0,
                 tls: ClientTLS | None = None) -> list[bytes]:
    """The hellos the peer at ``target`` holds (see RecordService.Peers); oversize ones and any
    beyond ``MAX_HELLOS`` are dropped. Claims only: check each as a gossiped hello."""
    with as_channel(target, tls=tls) as channel:
        reply = records_pb2_grpc.RecordServiceStub(channel).Peers(records_pb2.PeersRequest(), timeout=timeout)
    return [h for h in reply.hellos[:MAX_HELLOS] if 0 < len(h) <= MAX_HELLO_BYTES]


def sync_records(target: grpc.Channel | str, have_ids: Iterable[str], *, hello: bytes = b"",
                 timeout: float = 30.0, tls: ClientTLS | None = None) -> list[bytes]:
    """Envelopes the peer at ``target`` holds and we lack, oldest first. Verify each before use.
    ``hello``: our hello blob, so the peer learns of us (see SyncRequest.hello)."""
    with as_channel(target, tls=tls) as channel:
        stub = records_pb2_grpc.RecordServiceStub(channel)
        request = records_pb2.SyncRequest(have_ids=sorted(set(have_ids)), hello=hello)
        return [envelope.data for envelope in stub.Sync(request, timeout=timeout)]


def push_record(target: grpc.Channel | str, envelope: bytes, *,
                timeout: float = 10.0, tls: ClientTLS | None = None) -> tuple[bool, str, str]:
    """Push one envelope; returns the peer's ``(accepted, record_id, reason)``."""
    with as_channel(target, tls=tls) as channel:
        reply = records_pb2_grpc.RecordServiceStub(channel).Push(
            records_pb2.Envelope(data=envelope), timeout=timeout)
        return reply.accepted, reply.record_id, reply.reason


def identify_peer(target: grpc.Channel | str, *, timeout: float = 10.0,
                  tls: ClientTLS | None = None) -> records_pb2.PeerInfo:
    """Who the peer at ``target`` says it is and where its libp2p host listens (used to bootstrap by
    gRPC address). Unverified beyond the libp2p handshake that follows: Noise checks the peer id."""
    with as_channel(target, tls=tls) as channel:
        return records_pb2_grpc.RecordServiceStub(channel).Identify(records_pb2.IdentifyRequest(), timeout=timeout)
