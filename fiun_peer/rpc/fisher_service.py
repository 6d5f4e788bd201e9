"""FisherService: serve unlearning Fishers in chunks, and fetch them back with digest checks.

Gossip names a Fisher by digest only; the bytes come from a peer we do not trust, so the client
re-hashes what it reassembled and refuses anything that is not exactly the requested blob.

The server serves only what ``fiun_peer.policy.blob_refusal`` lets peers read: Fishers named in a
stored announcement. Anything else (weights, data, model Fishers, blobs of unknown kind) answers
NOT_FOUND exactly as a blob it does not hold, so the answer does not confirm that a peer holds, say,
a data set whose digest the caller guessed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from fiun_peer.policy import blob_refusal
from fiun_peer.records import is_digest
from fiun_peer.rpc.channel import as_channel
from fiun_peer.rpc.generated.fiun.v1 import fisher_pb2, fisher_pb2_grpc
from fiun_peer.store import Store

if TYPE_CHECKING:
    from fiun_peer.rpc.auth import ClientTLS

CHUNK_BYTES = 1 << 20  # 1 MiB: well under gRPC's default 4 MiB message limit on any peer
MAX_BLOB_BYTES = 4 << 30  # refuse a server announcing more than this before buffering anything
log = logging.getLogger("fiun_peer.fisher_service")


class BlobFetchError(Exception):
    """The server's stream was inconsistent (offsets, sizes) or too large."""


class BlobDigestMismatch(BlobFetchError):
    """The reassembled bytes do not hash to the requested digest."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"blob digest mismatch: requested {expected}, received bytes hash to {actual}")
        self.expected = expected
        self.actual = actual


class FisherServicer(fisher_pb2_grpc.FisherServiceServicer):
    """Streams the Fishers of a :class:`~fiun_peer.store.Store` that peers may read."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def Fetch(self, request: fisher_pb2.FetchRequest,
              context: grpc.ServicerContext) -> Iterator[fisher_pb2.Chunk]:
        digest = request.digest
        if not is_digest(digest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"digest must be 64 lowercase hex characters (sha256), got {digest[:80]!r}")
        absent = f"no Fisher with digest {digest} here (peers are served Fishers named in announcements only)"
        refusal = blob_refusal(self._store.blob_kinds(digest), "peer", announced=self._store.announced(digest))
        if refusal:
            if self._store.has_blob(digest):  # counted and logged here, invisible to the caller
                self._store.incr("fetch_refused")
                log.info("blob fetch refused", extra={"event": "fetch_refused", "digest": digest, "detail": refusal})
            context.abort(grpc.StatusCode.NOT_FOUND, absent)
        try:
            fh = self._store.open_blob(digest)
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, absent)
        with fh:
            total = os.fstat(fh.fileno()).st_size
            offset = 0
            while True:  # at least one chunk, so even an empty blob reports its total_size
                data = fh.read(CHUNK_BYTES)
                yield fisher_pb2.Chunk(data=data, offset=offset, total_size=total)
                offset += len(data)
                if not data or offset >= total:
                    break


def fetch_blob(channel_or_target: grpc.Channel | str, digest: str, *, timeout: float = 120.0,
               max_bytes: int = MAX_BLOB_BYTES, tls: ClientTLS | None = None) -> bytes:
    """Fetch a blob by digest and verify it; raises grpc.RpcError (e.g. NOT_FOUND) or BlobFetchError.
    ``tls``: dial a string target over TLS."""
    if not is_digest(digest):
        raise ValueError(f"not a lowercase hex sha256 digest: {digest!r}")
    with as_channel(channel_or_target, tls=tls) as channel:
        call = fisher_pb2_grpc.FisherServiceStub(channel).Fetch(
            fisher_pb2.FetchRequest(digest=digest), timeout=timeout)
        try:
            data = _reassemble(call, max_bytes)
        finally:
            call.cancel()  # no-op when the stream already ended; stops the server on an early error
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BlobDigestMismatch(digest, actual)
    return data


def _reassemble(chunks: Iterator[fisher_pb2.Chunk], max_bytes: int) -> bytes:
    parts: list[bytes] = []
    received = 0
    total: int | None = None
    for chunk in chunks:
        if total is None:
            total = chunk.total_size
            if total > max_bytes:
                raise BlobFetchError(f"server announces {total} bytes, more than the {max_bytes} allowed")
        if chunk.total_size != total:
            raise BlobFetchError(f"total_size changed mid-stream ({total} -> {chunk.total_size})")
        if chunk.offset != received or received + len(chunk.data) > total:
            raise BlobFetchError(f"chunk at offset {chunk.offset} (+{len(chunk.data)}) does not follow "
                                 f"{received} of {total} bytes")
        parts.append(chunk.data)
        received += len(chunk.data)
    if received != (total or 0):
        raise BlobFetchError(f"stream ended after {received} of {total} bytes")
    return b"".join(parts)
