"""Build the peer's gRPC server: our services plus standard health checking and reflection, on a
plaintext or TLS port, with AdminService behind the credential check of ``fiun_peer.rpc.auth``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fiun_peer.rpc.auth import rewrap_unary
from fiun_peer.rpc.channel import MAX_MESSAGE_BYTES, channel_options
from fiun_peer.rpc.generated.fiun.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fisher_pb2,
    fisher_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
)

if TYPE_CHECKING:
    from fiun_peer.rpc.auth import AdminAuth, ServerTLS
    from fiun_peer.rpc.peer_auth import PeerAuth

# (servicer base class, registration function, fully-qualified service name)
_SERVICES: tuple[tuple[type, Any, str], ...] = (
    (admin_pb2_grpc.AdminServiceServicer, admin_pb2_grpc.add_AdminServiceServicer_to_server,
     admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name),
    (fisher_pb2_grpc.FisherServiceServicer, fisher_pb2_grpc.add_FisherServiceServicer_to_server,
     fisher_pb2.DESCRIPTOR.services_by_name["FisherService"].full_name),
    (records_pb2_grpc.RecordServiceServicer, records_pb2_grpc.add_RecordServiceServicer_to_server,
     records_pb2.DESCRIPTOR.services_by_name["RecordService"].full_name),
)


def make_server(bind: str, *servicers: object, max_message_bytes: int = MAX_MESSAGE_BYTES,
                max_workers: int = 32,
                health_servicer: health.HealthServicer | None = None,
                tls: ServerTLS | None = None, admin_auth: AdminAuth | None = None,
                peer_auth: PeerAuth | None = None,
                count: Callable[[str], Any] | None = None,
                extra_handlers: tuple[grpc.GenericRpcHandler, ...] = ()) -> tuple[grpc.Server, int]:
    """A threaded gRPC server bound to ``bind`` (``host:port``; port 0 picks a free one), not started.

    ``servicers`` are instances of the generated ``*Servicer`` classes (Admin, Fisher, Record). Every
    registered service is marked SERVING in the health service, unless ``health_servicer`` is given:
    then they start NOT_SERVING until the caller calls :func:`set_serving`. ``tls``: serve TLS (mTLS when it
    names a client CA) instead of plaintext. ``admin_auth``: AdminService calls need one of its
    credentials; ``peer_auth``: RecordService and FisherService calls need a signature by an allowed
    peer key (refusals of either are counted with ``count(name)``). Returns ``(server, bound_port)``;
    call ``server.start()``.
    """
    options = [*channel_options(max_message_bytes),
               # gRPC sets SO_REUSEPORT by default: a second peer on a taken port would bind silently.
               ("grpc.so_reuseport", 0)]
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fiun-grpc")
    interceptors: list[grpc.ServerInterceptor] = [DecodeGuard()]
    if admin_auth is not None:
        from fiun_peer.rpc.auth import AdminAuthInterceptor

        interceptors.append(AdminAuthInterceptor(admin_auth, count=count))
    if peer_auth is not None:  # inside DecodeGuard: it hashes the request bytes DecodeGuard has parsed
        from fiun_peer.rpc.peer_auth import PeerAuthInterceptor

        interceptors.append(PeerAuthInterceptor(peer_auth, count=count))
    server = grpc.server(executor, options=options, interceptors=interceptors)
    names = [_register(servicer, server) for servicer in servicers]
    if extra_handlers:
        server.add_generic_rpc_handlers(extra_handlers)
    if len(set(names)) != len(names):
        raise ValueError(f"a service was given twice: {names}")
    # A caller that passes its own health servicer decides when it is ready: everything starts
    # NOT_SERVING and the caller flips it (see set_serving); otherwise SERVING at once.
    ready = health_servicer is None
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    set_serving(health_servicer, ready, names)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*names, health_name, reflection.SERVICE_NAME), server)
    try:
        port = server.add_secure_port(bind, tls.credentials()) if tls else server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {bind}: {exc}") from exc
    if port == 0:  # older grpc versions report failure this way instead of raising
        raise OSError(f"cannot bind gRPC server to {bind}")
    return server, port


def admin_elsewhere_handler() -> grpc.GenericRpcHandler:
    """For the peer port: every AdminService method answers UNIMPLEMENTED saying that the admin API
    has its own listener (``fiun-peer run --admin``), instead of gRPC's bare "Method not found".
    It does not say where: the peer port is open to the network, the admin address need not be."""
    service = admin_pb2.DESCRIPTOR.services_by_name["AdminService"]

    def refuse(request: bytes, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "this is the peer port; the admin API listens on its own address (`fiun-peer run "
                      "--admin`, loopback by default; HOME/run.json names it, `fiun-peer admin --home HOME` "
                      "finds it)")

    handlers = {m.name: (grpc.unary_stream_rpc_method_handler(refuse) if m.server_streaming
                         else grpc.unary_unary_rpc_method_handler(refuse)) for m in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def service_names() -> list[str]:
    """Fully-qualified names of the fiun.v1 services a server can register."""
    return [name for _, _, name in _SERVICES]


def new_health() -> health.HealthServicer:
    """A health servicer for ``make_server``: one may answer on several servers (the daemon's peer and
    admin listeners share one), NOT_SERVING until ``set_serving``."""
    return health.HealthServicer()


def set_serving(health_servicer: health.HealthServicer, serving: bool, names: list[str] | None = None) -> None:
    """Mark the whole server ("") and each named service (default: every fiun.v1 service) SERVING or
    NOT_SERVING in gRPC health."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *(service_names() if names is None else names)):  # "" is the whole server's status
        health_servicer.set(name, status)


class _Undecodable:
    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeGuard(grpc.ServerInterceptor):
    """Bytes that are not the method's request message get INVALID_ARGUMENT with the parser's
    reason (grpcio's own answer would be INTERNAL, which blames the server)."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse, method = handler.request_deserializer, handler_call_details.method

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as exc:  # protobuf's DecodeError, or anything a custom parser raises
                return _Undecodable(exc)

        def guard(behavior: Callable) -> Callable:
            def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"request to {method} is not a valid message: {request.error}")
                return behavior(request, context)
            return wrapper

        return rewrap_unary(handler, guard, deserialize)


def _register(servicer: object, server: grpc.Server) -> str:
    for base, add, name in _SERVICES:
        if isinstance(servicer, base):
            add(servicer, server)
            return name
    raise TypeError(f"{type(servicer).__name__} is not a servicer of a fiun.v1 service")
