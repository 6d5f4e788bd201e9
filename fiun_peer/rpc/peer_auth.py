"""Who may call a peer's peer services (RecordService, FisherService): optionally, only known keys.

By default the peer services are open: records are signed and name no private data, and the blob
service hands out only announced Fishers (``fiun_peer.policy.blob_refusal``). An operator who wants
a closed network starts every peer with ``--allow-peers FILE``: a list of the members' Ed25519
public keys (64 hex) or libp2p peer ids (``12D3KooW...``, the same keys), one per line, ``#``
comments. Every call to a peer service must then carry a signature by a listed key.

The caller proves its key with a per-call signed metadata header (no extra round trip, and it works
over plaintext gRPC and TLS alike)::

    fiun-peer-auth: v1 <public key hex> <unix ms> <nonce hex> <base64 Ed25519 signature>

signed over ``fiun-peer-call/v1 \\n method \\n unix ms \\n nonce \\n sha256(request bytes)``. The server
hashes the request bytes as they arrive, so a signature covers exactly one request to one method;
it accepts a timestamp within :data:`MAX_SKEW` seconds of its clock and each nonce once. A captured
header can therefore be replayed only as the identical request, within the window, and not twice to
the same peer. It authenticates, it does not encrypt: use TLS against eavesdroppers.

No header or an invalid one: UNAUTHENTICATED; a valid signature by a key not on the list:
PERMISSION_DENIED. Peers sign every call they make (``with_signer``), so a network can be closed
one peer at a time. The same list closes the libp2p side: a connection from a peer id that is not
on it is closed as soon as it is up (the Noise handshake has proven the id), and hellos naming
other keys are ignored, so the peer neither gossips with nor dials outsiders.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fiun_peer.identity import Identity, verify_signature
from fiun_peer.rpc.auth import _CallDetails, rewrap_unary

HEADER = "fiun-peer-auth"
VERSION = "v1"
PEER_SERVICES = ("/fiun.v1.RecordService/", "/fiun.v1.FisherService/")
#: Seconds a signed call stays valid either side of the server's clock.
MAX_SKEW = 120.0
#: Nonces remembered at most (each for 2 * MAX_SKEW): far more calls than a peer gets in that time.
MAX_NONCES = 1_000_000
_CONTEXT = b"fiun-peer-call/" + VERSION.encode()


class AllowListError(ValueError):
    """An allow-list file is missing or holds something that is not a peer key or peer id."""


def _signed_bytes(method: str, millis: str, nonce: str, body_digest: bytes) -> bytes:
    return b"\n".join((_CONTEXT, method.encode("utf-8"), millis.encode(), nonce.encode(), body_digest))


def sign_call(identity: Identity, method: str, body: bytes, *, now: float | None = None,
              nonce: str | None = None) -> str:
    """The ``fiun-peer-auth`` header value for one call of ``method`` with these request bytes."""
    millis = str(int((time.time() if now is None else now) * 1000))
    nonce = nonce or secrets.token_hex(16)
    sig = identity.sign(_signed_bytes(method, millis, nonce, hashlib.sha256(body).digest()))
    return f"{VERSION} {identity.public_key_hex} {millis} {nonce} {base64.b64encode(sig).decode('ascii')}"


def key_of_peer_id(peer_id: str) -> str:
    """The raw Ed25519 public key (hex) inside a libp2p peer id."""
    from libp2p.peer.id import ID

    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:  # base58 and multihash errors have many types
        raise AllowListError(f"{peer_id[:80]!r} is not a libp2p peer id: {exc}") from None
    if key is None or len(key.to_bytes()) != 32:
        raise AllowListError(f"{peer_id[:80]!r} is not the peer id of an Ed25519 key")
    return key.to_bytes().hex()


@dataclass(frozen=True)
class AllowList:
    """The public keys (lowercase hex) that may call this peer's peer services."""

    keys: frozenset[str]

    @classmethod
    def of(cls, entries: Iterable[str]) -> AllowList:
        keys = set()
        for raw in entries:
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            if len(entry) == 64 and all(c in "0123456789abcdefABCDEF" for c in entry):
                keys.add(entry.lower())
            else:
                keys.add(key_of_peer_id(entry))
        return cls(frozenset(keys))

    @classmethod
    def from_file(cls, path: Path) -> AllowList:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AllowListError(f"cannot read the allow list {path}: {exc}") from None
        try:
            return cls.of(text.splitlines())
        except AllowListError as exc:
            raise AllowListError(f"{path}: {exc} (one Ed25519 public key in hex or libp2p peer id per line)") from None


@dataclass
class PeerAuth:
    """Checks ``fiun-peer-auth`` headers against an :class:`AllowList` (plus this peer's own key)."""

    allow: AllowList
    own_key: str = ""
    clock: Callable[[], float] = time.time
    _nonces: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, header: str | bytes | None, method: str, body_digest: bytes
              ) -> tuple[grpc.StatusCode, str] | None:
        """None when the caller may proceed, else the status and message to refuse with."""
        if header is None:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"this peer serves known peers only: sign the call with your peer key ({HEADER} metadata, "
                    "see docs/security.md)")
        if isinstance(header, bytes):
            header = header.decode("utf-8", errors="replace")
        parts = header.split(" ")
        if len(parts) != 5 or parts[0] != VERSION:
            return grpc.StatusCode.UNAUTHENTICATED, f"{HEADER} must be '{VERSION} KEY MILLIS NONCE SIGNATURE'"
        _, key, millis, nonce, sig_text = parts
        try:
            sig = base64.b64decode(sig_text, validate=True)
            at = int(millis) / 1000
        except (binascii.Error, ValueError):
            return grpc.StatusCode.UNAUTHENTICATED, f"{HEADER}: malformed time or signature"
        if not 16 <= len(nonce) <= 64 or not nonce.isalnum():
            return grpc.StatusCode.UNAUTHENTICATED, f"{HEADER}: the nonce must be 16 to 64 letters or digits"
        now = self.clock()
        if abs(now - at) > MAX_SKEW:
            return (grpc.StatusCode.UNAUTHENTICATED,
                    f"{HEADER}: signed {now - at:+.0f} s from this peer's clock (at most {MAX_SKEW:.0f} s)")
        if not verify_signature(key, sig, _signed_bytes(method, millis, nonce, body_digest)):
            return grpc.StatusCode.UNAUTHENTICATED, f"{HEADER}: the signature does not verify for this call"
        if not self._fresh(f"{key}:{nonce}", now):
            return grpc.StatusCode.UNAUTHENTICATED, f"{HEADER}: this signed call was already used"
        if not self.allows(key):
            return grpc.StatusCode.PERMISSION_DENIED, f"key {key[:16]}... is not on this peer's allow list"
        return None

    def allows(self, key: str) -> bool:
        return key == self.own_key or key in self.allow.keys

    def allows_peer_id(self, peer_id: str) -> bool:
        """For libp2p connections: the peer id holds the key (Ed25519 ids embed it)."""
        try:
            return self.allows(key_of_peer_id(peer_id))
        except AllowListError:
            return False

    def _fresh(self, nonce: str, now: float) -> bool:
        with self._lock:
            while self._nonces:  # oldest first (insertion order is expiry order, give or take a tick)
                old, expiry = next(iter(self._nonces.items()))
                if expiry > now and len(self._nonces) < MAX_NONCES:
                    break
                del self._nonces[old]
            if nonce in self._nonces:
                return False
            self._nonces[nonce] = now + 2 * MAX_SKEW
            return True


class _Body:
    __slots__ = ("digest", "message")

    def __init__(self, digest: bytes, message: Any) -> None:
        self.digest, self.message = digest, message


class PeerAuthInterceptor(grpc.ServerInterceptor):
    """Checks :class:`PeerAuth` before every RecordService and FisherService handler.

    The request bytes are hashed as they are deserialized (the signature covers them); the check
    runs in the handler, where the metadata is at hand."""

    def __init__(self, auth: PeerAuth, *, count: Callable[[str], Any] | None = None) -> None:
        self._auth, self._count = auth, count

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(PEER_SERVICES):
            return handler
        if handler.request_streaming or handler.request_deserializer is None:  # none of ours: refuse all
            return _refusing(handler, grpc.StatusCode.PERMISSION_DENIED, "streaming requests are not served")
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> _Body:
            return _Body(hashlib.sha256(data).digest(), parse(data))

        def guard(behavior: Callable) -> Callable:
            def wrapper(body: Any, context: grpc.ServicerContext) -> Any:
                header = next((v for k, v in context.invocation_metadata() or () if k == HEADER), None)
                refusal = self._auth.check(header, method, body.digest)
                if refusal is not None:
                    if self._count is not None:
                        self._count(f"peer_{refusal[0].name.lower()}")
                    context.abort(*refusal)
                return behavior(body.message, context)
            return wrapper

        return rewrap_unary(handler, guard, deserialize)


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)
    kinds = {"stream_stream": grpc.stream_stream_rpc_method_handler,
             "stream_unary": grpc.stream_unary_rpc_method_handler}
    kind = "stream_stream" if handler.response_streaming else "stream_unary"
    return kinds[kind](refuse, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


# -- client side ------------------------------------------------------------------------------------


class _Signer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, identity: Identity) -> None:
        self._identity = identity

    def _details(self, details: grpc.ClientCallDetails, request: Any) -> _CallDetails:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        body = request if isinstance(request, bytes) else request.SerializeToString()
        metadata = [*(details.metadata or ()), (HEADER, sign_call(self._identity, method, body))]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, request), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details, request), request)


def with_signer(channel: grpc.Channel, identity: Identity | None) -> grpc.Channel:
    """``channel`` signing every unary-request call with ``identity`` (unchanged for None)."""
    return channel if identity is None else grpc.intercept_channel(channel, _Signer(identity))
