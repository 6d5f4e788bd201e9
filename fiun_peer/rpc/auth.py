"""Who may call a peer's gRPC API: admin credentials, TLS material, and the server interceptor.

AdminService is the operator's control surface and needs a credential on every call:

- a bearer token (``authorization: Bearer <HOME/admin.token>`` metadata), for loopback development
  and scripts on the peer's own machine; compared in constant time;
- or, when the server runs mTLS (``--tls-client-ca``), a client certificate signed by that CA whose
  common name is one of the admin names (``--admin-cn``, default ``fiun-admin``). Peer certificates
  from the same CA carry other names, so a peer can fetch Fishers but not drive another peer.

No credential -> UNAUTHENTICATED; a wrong one -> PERMISSION_DENIED. The admin credential is also
the only way to a model's weights (AdminService.ExportModel). FisherService and RecordService are
open by default (they serve signed records and announced Fishers only, see
``fiun_peer.policy.blob_refusal``), or closed to a list of peer keys (``fiun_peer.rpc.peer_auth``);
gRPC health stays open.

gRPC's Python server cannot *ask* for a client certificate without requiring one, so with
``--tls-client-ca`` every client needs a CA-signed certificate; a peer presents its own
``--tls-cert`` when it calls other peers. Secret files (token, TLS key) must be mode 0600.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ..home import HomeError, write_new_secret

TOKEN_FILE = "admin.token"
ADMIN_SERVICE = "/fiun.v1.AdminService/"
DEFAULT_ADMIN_CN = "fiun-admin"
TOKEN_ENV = "FIUN_ADMIN_TOKEN"


class AuthError(Exception):
    """A credential file is missing, unsafe or unusable."""


# -- secret files -----------------------------------------------------------------------------------


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that group or others can access (the key would already be exposed)."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise AuthError(f"no {what} at {path}") from None
    if mode & 0o077:
        raise AuthError(f"{what} {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                        f"run: chmod 600 {path}")


def read_private(path: Path, what: str) -> bytes:
    check_private(path, what)
    return Path(path).read_bytes()


def create_token(home: Path) -> str:
    """Write a fresh random admin token to ``home/admin.token`` (born 0600); refuses to overwrite."""
    path = Path(home) / TOKEN_FILE
    token = secrets.token_urlsafe(32)
    try:
        write_new_secret(path, (token + "\n").encode("ascii"), what="admin token")
    except HomeError as exc:
        raise AuthError(str(exc)) from None
    return token


def load_token(path: Path) -> str:
    """The token in a token file (0600 required); surrounding whitespace is ignored."""
    token = read_private(path, "admin token").decode("utf-8", errors="replace").strip()
    if not token:
        raise AuthError(f"admin token file {path} is empty")
    return token


def ensure_token(home: Path) -> str:
    """The peer's admin token, created on first use (homes made before tokens existed keep working)."""
    path = Path(home) / TOKEN_FILE
    if not path.exists():
        create_token(home)
    return load_token(path)


# -- TLS material -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTLS:
    """Server certificate chain and key (PEM); ``client_ca`` set = mTLS (client certs required)."""

    cert: bytes
    key: bytes = field(repr=False)
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTLS:
        return cls(cert=Path(cert).read_bytes(), key=read_private(key, "TLS key"),
                   client_ca=Path(client_ca).read_bytes() if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


@dataclass(frozen=True)
class ClientTLS:
    """What a client needs to dial a TLS server: the CA to verify it, and optionally its own cert."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_files(cls, ca: Path, cert: Path | None = None, key: Path | None = None) -> ClientTLS:
        if (cert is None) != (key is None):
            raise AuthError("a client certificate needs both --tls-cert and --tls-key")
        return cls(ca=Path(ca).read_bytes(), cert=Path(cert).read_bytes() if cert else None,
                   key=read_private(key, "TLS key") if key else None)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


# -- server side ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminAuth:
    """The credentials AdminService accepts: a token, and/or client certificates with these names."""

    token: str | None = field(default=None, repr=False)
    admin_cns: frozenset[str] = frozenset({DEFAULT_ADMIN_CN})

    def check(self, metadata: Iterable[tuple[str, Any]], auth_context: dict[str, list[bytes]]
              ) -> tuple[grpc.StatusCode, str] | None:
        """None when the caller may proceed, else the status and message to refuse with."""
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is not None:
            if isinstance(header, bytes):
                header = header.decode("utf-8", errors="replace")
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not presented:
                return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'"
            if self.token is not None and hmac.compare_digest(presented.strip().encode(), self.token.encode()):
                return None
            return grpc.StatusCode.PERMISSION_DENIED, "wrong admin token"
        names = [n.decode("utf-8", errors="replace") for n in auth_context.get("x509_common_name", [])]
        if names:  # only present when the TLS layer verified the certificate against the client CA
            if any(n in self.admin_cns for n in names):
                return None
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate CN={names[0]!r} is not an admin (admins: {sorted(self.admin_cns)})")
        return (grpc.StatusCode.UNAUTHENTICATED,
                "admin calls need a credential: metadata 'authorization: Bearer <token>' (the token is in "
                "the peer's HOME/admin.token) or an admin client certificate over mTLS")


def _guarded(behavior: Callable, auth: AdminAuth, count: Callable[[str], None] | None) -> Callable:
    def wrapper(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        refusal = auth.check(context.invocation_metadata() or (), context.auth_context() or {})
        if refusal is not None:
            if count is not None:
                count(f"admin_{refusal[0].name.lower()}")
            context.abort(*refusal)
        return behavior(request_or_iterator, context)
    return wrapper


class AdminAuthInterceptor(grpc.ServerInterceptor):
    """Checks :class:`AdminAuth` before every AdminService handler; other services pass through.

    The check runs inside the handler (not in ``intercept_service``) because only the handler's
    context exposes the verified client certificate.
    """

    def __init__(self, auth: AdminAuth, *, count: Callable[[str], None] | None = None) -> None:
        self._auth = auth
        self._count = count

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(ADMIN_SERVICE):
            return handler
        for kind, factory in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                              ("unary_stream", grpc.unary_stream_rpc_method_handler),
                              ("stream_unary", grpc.stream_unary_rpc_method_handler),
                              ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(_guarded(behavior, self._auth, self._count),
                               request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)
        return handler


# -- client side ------------------------------------------------------------------------------------


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata to every call (call credentials would refuse a plaintext channel)."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = list(metadata)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(details.method, details.timeout, [*(details.metadata or ()), *self._metadata],
                            details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


def rewrap_unary(handler: grpc.RpcMethodHandler, guard: Callable[[Callable], Callable],
                 deserialize: Callable[[bytes], Any]) -> grpc.RpcMethodHandler:
    """A unary-request ``handler`` (unary or streaming reply) whose behaviour runs inside ``guard`` and
    whose request bytes go through ``deserialize``: the plumbing of the server interceptors here,
    in peer_auth and in server."""
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(guard(handler.unary_stream), request_deserializer=deserialize,
                                                    response_serializer=handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(guard(handler.unary_unary), request_deserializer=deserialize,
                                               response_serializer=handler.response_serializer)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """``channel`` sending ``authorization: Bearer <token>`` on every call (unchanged for None)."""
    if not token:
        return channel
    return grpc.intercept_channel(channel, _Metadata([("authorization", f"Bearer {token}")]))


def resolve_token(*, token_file: Path | None = None, home: Path | None = None,
                  env: dict[str, str] | None = None) -> str | None:
    """The admin token a client should send: ``--token-file``, else ``--home``'s admin.token, else
    ``$FIUN_ADMIN_TOKEN``; None when none is given (e.g. mTLS with an admin certificate)."""
    if token_file is not None:
        return load_token(token_file)
    if home is not None:
        return load_token(Path(home) / TOKEN_FILE)
    value = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return value or None
