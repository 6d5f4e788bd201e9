"""All of gRPC, and nothing else: the wire contract (generated, checked in), the servicers
(admin_service, record_service, fisher_service), the server and its interceptors (auth for the
admin credential, peer_auth for signed peer calls), channels, and the clients (admin_client for
AdminService, record/Fisher fetches). Outside rpc/ only the daemon's wiring names a gRPC module
(the health servicer it flips).

``from fiun_peer.rpc import admin_pb2, admin_pb2_grpc, fisher_pb2, ...`` works. The generated modules
load lazily so that ``python -m fiun_peer.rpc.regenerate`` still runs when they are missing or stale.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

_GENERATED = (
    "admin_pb2", "admin_pb2_grpc",
    "fisher_pb2", "fisher_pb2_grpc",
    "records_pb2", "records_pb2_grpc",
)

if TYPE_CHECKING:
    from fiun_peer.rpc.generated.fiun.v1 import (
        admin_pb2,
        admin_pb2_grpc,
        fisher_pb2,
        fisher_pb2_grpc,
        records_pb2,
        records_pb2_grpc,
    )

__all__ = ["admin_pb2", "admin_pb2_grpc", "fisher_pb2", "fisher_pb2_grpc", "records_pb2",
           "records_pb2_grpc"]


def __getattr__(name: str) -> ModuleType:
    if name in _GENERATED:
        module = importlib.import_module(f"fiun_peer.rpc.generated.fiun.v1.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
