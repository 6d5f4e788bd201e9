"""Build the peer's gRPC server: our services plus standard health checking and reflection."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fiun_peer.rpc.channel import MAX_MESSAGE_BYTES, channel_options
from fiun_peer.rpc.generated.fiun.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    fisher_pb2,
    fisher_pb2_grpc,
    records_pb2,
    records_pb2_grpc,
)

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
                health_servicer: health.HealthServicer | None = None) -> tuple[grpc.Server, int]:
    """A threaded gRPC server bound to ``bind`` (``host:port``; port 0 picks a free one), not started.

    ``servicers`` are instances of the generated ``*Servicer`` classes (Admin, Fisher, Record). Every
    registered service is marked SERVING in the health service. Returns ``(server, bound_port)``;
    call ``server.start()``.
    """
    options = [*channel_options(max_message_bytes),
               # gRPC sets SO_REUSEPORT by default: a second peer on a taken port would bind silently.
               ("grpc.so_reuseport", 0)]
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fiun-grpc")
    server = grpc.server(executor, options=options)
    names = [_register(servicer, server) for servicer in servicers]
    if len(set(names)) != len(names):
        raise ValueError(f"a service was given twice: {names}")
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names):  # "" is the whole server's status
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection((*names, health_name, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC server to {bind}: {exc}") from exc
    if port == 0:  # older grpc versions report failure this way instead of raising
        raise OSError(f"cannot bind gRPC server to {bind}")
    return server, port


def _register(servicer: object, server: grpc.Server) -> str:
    for base, add, name in _SERVICES:
        if isinstance(servicer, base):
            add(servicer, server)
            return name
    raise TypeError(f"{type(servicer).__name__} is not a servicer of a fiun.v1 service")
