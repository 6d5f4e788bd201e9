"""The client side of a peer's operator API: one method per AdminService call, plus the health probe.

Owns the channel set-up (admin token as bearer metadata, TLS or mTLS) and the translation of gRPC
failures into one exception, :class:`RpcFailure` (status code name + message), so that its users
(the ``fiun-peer`` CLI, ``simulations/`` and ``bench/``) never import grpc or the generated stubs.
Replies are the generated protobuf messages, unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from .channel import open_channel
from .generated.fiun.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from .auth import ClientTLS

T = TypeVar("T")

#: Status codes a busy or starting peer answers with; ``patience`` retries these, nothing else.
TRANSIENT = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})


class RpcFailure(Exception):
    """A gRPC call failed: ``code`` is the status code's name (e.g. ``NOT_FOUND``), ``message``
    the peer's readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    @classmethod
    def of(cls, exc: grpc.RpcError) -> RpcFailure:
        return cls(exc.code().name, exc.details() or "")


@dataclass(frozen=True)
class ParentSpec:
    """A parent named at publish time: the model, its relation, and optionally which version (its
    digest or version number; neither: the parent's current version)."""

    model_id: str
    relation: str = "finetune"
    digest: str = ""
    version: int = 0


class AdminClient:
    """``AdminClient(target, token=..., tls=...)``: calls to one peer's AdminService.

    ``timeout`` is every call's deadline (a method's ``timeout=`` overrides it); with ``patience``
    > 0 a call that fails transiently (a peer starved of CPU misses a deadline) is retried for up to
    that many seconds. :meth:`with_policy` gives another policy on the same channel."""

    def __init__(self, target: str, *, token: str | None = None, tls: ClientTLS | None = None,
                 timeout: float = 60.0, patience: float = 0.0, _channel: grpc.Channel | None = None) -> None:
        self.target, self.timeout, self.patience = target, timeout, patience
        self._owns_channel = _channel is None
        self._channel = _channel if _channel is not None else open_channel(target, tls=tls, token=token)
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)  # the raw stub, for wire-level tests

    @classmethod
    def for_home(cls, home: Path, target: str, **kwargs: Any) -> AdminClient:
        """A client carrying the token in ``home``'s admin.token (a peer's own credential)."""
        from .auth import resolve_token

        return cls(target, token=resolve_token(home=Path(home)), **kwargs)

    def with_policy(self, *, timeout: float | None = None, patience: float | None = None) -> AdminClient:
        """The same channel with another deadline and/or retry patience (closing it closes nothing)."""
        return AdminClient(self.target, timeout=self.timeout if timeout is None else timeout,
                           patience=self.patience if patience is None else patience, _channel=self._channel)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                return method(request, timeout=self.timeout if timeout is None else timeout)
            except grpc.RpcError as exc:
                if exc.code().name not in TRANSIENT or time.monotonic() >= deadline:
                    raise RpcFailure.of(exc) from None
            time.sleep(0.5)

    def status(self, *, timeout: float | None = None) -> admin_pb2.StatusReply:
        return self._call(self.stub.Status, admin_pb2.StatusRequest(), timeout)

    def list_lineage(self, *, timeout: float | None = None) -> admin_pb2.ListLineageReply:
        return self._call(self.stub.ListLineage, admin_pb2.ListLineageRequest(), timeout)

    def known_models(self, *, timeout: float | None = None) -> set[str]:
        """The ids of every model in the lineage this peer knows."""
        return {m.model_id for m in self.list_lineage(timeout=timeout).models}

    def publish(self, model_id: str, weights: bytes, data: bytes, *, parents: Iterable[ParentSpec] = (),
                labels: Sequence[int] = (), architecture_json: str = "", format: str = "", head: str = "",
                wait_parents: float = 0.0, on_wait: Callable[[str], None] | None = None,
                timeout: float | None = None) -> admin_pb2.PublishModelReply:
        """PublishModel. With ``wait_parents`` > 0 the call is repeated while the peer answers
        FAILED_PRECONDITION (a parent's lineage is still on its way), for up to that many seconds;
        ``on_wait(reason)`` is called once, at the first such answer."""
        request = admin_pb2.PublishModelRequest(
            model_id=model_id, weights=weights, data=data, labels=list(labels), architecture_json=architecture_json,
            format=format, head=head, parents=[admin_pb2.Parent(model_id=p.model_id, relation=p.relation,
                                                                digest=p.digest, version=p.version) for p in parents])
        deadline = time.monotonic() + max(wait_parents, 0.0)
        told = False
        while True:
            try:
                return self._call(self.stub.PublishModel, request, timeout)
            except RpcFailure as exc:
                if exc.code != "FAILED_PRECONDITION" or time.monotonic() >= deadline:
                    raise
                if not told and on_wait is not None:
                    on_wait(exc.message)
                told = True
            time.sleep(0.5)

    def request_unlearning(self, forget_labels: Sequence[int], *, request_id: str = "", settings_json: str = "",
                           force: bool = False, timeout: float | None = None) -> admin_pb2.RequestUnlearningReply:
        return self._call(self.stub.RequestUnlearning, admin_pb2.RequestUnlearningRequest(
            forget_labels=list(forget_labels), request_id=request_id, settings_json=settings_json, force=force),
            timeout)

    def get_request(self, request_id: str, *, timeout: float | None = None) -> admin_pb2.GetRequestReply:
        return self._call(self.stub.GetRequest, admin_pb2.GetRequestRequest(request_id=request_id), timeout)

    def find_request(self, request_id: str, *, timeout: float | None = None) -> admin_pb2.GetRequestReply | None:
        """GetRequest, None while this peer has not heard of the request (NOT_FOUND)."""
        try:
            return self.get_request(request_id, timeout=timeout)
        except RpcFailure as exc:
            if exc.code != "NOT_FOUND":
                raise
            return None

    def watch(self, request_id: str, *, interval: float = 0.5, missing_ok: bool = False,
              timeout: float | None = None) -> Iterator[admin_pb2.GetRequestReply | None]:
        """GetRequest every ``interval`` seconds, for as long as the caller iterates (it decides when
        the request is done enough or waited for too long). ``missing_ok``: yield None while the peer
        has not heard of the request instead of raising NOT_FOUND."""
        while True:
            yield (self.find_request(request_id, timeout=timeout) if missing_ok
                   else self.get_request(request_id, timeout=timeout))
            time.sleep(interval)

    def list_receipts(self, request_id: str = "", *, timeout: float | None = None) -> admin_pb2.ListReceiptsReply:
        return self._call(self.stub.ListReceipts, admin_pb2.ListReceiptsRequest(request_id=request_id), timeout)

    def export_model(self, model_id: str, *, digest: str = "", version: int = 0,
                     timeout: float | None = None) -> admin_pb2.ExportModelReply:
        return self._call(self.stub.ExportModel, admin_pb2.ExportModelRequest(
            model_id=model_id, model_digest=digest, version=version), timeout)


def check_health(target: str, *, service: str = "", tls: ClientTLS | None = None,
                 timeout: float = 5.0) -> tuple[str, bool]:
    """Ask a daemon's gRPC health service: (the status's name, whether it is SERVING)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(target, tls=tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                              timeout=timeout)
        except grpc.RpcError as exc:
            raise RpcFailure.of(exc) from None
    return (health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status),
            reply.status == health_pb2.HealthCheckResponse.SERVING)


def as_dict(reply: Any) -> dict[str, Any]:
    """A reply as the plain dict `--json` prints (proto field names)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(reply, preserving_proto_field_name=True)
