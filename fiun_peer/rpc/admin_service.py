"""AdminService: the gRPC face of the agent. Errors become gRPC statuses with readable messages.

Threading rule (see docs/architecture.md): servicers run in grpcio pool threads, never on the trio
loop, and must NOT read or write the agent or its store directly from there. The agent and the store
belong to the trio loop; a servicer reaches them only through ``TrioBridge.call_sync`` (which runs
the call on the loop and waits for its result), so every read sees a consistent store and no write
races the reconcile loop. One exception, on purpose: ExportModel reads a version's content-addressed
blobs (immutable once written, checked against their digest) in the gRPC thread after the bridge has
named the digest, so that reading (and rebuilding) a large artifact does not stall the loop."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import grpc

from ..agent import Agent, AgentError, NotFound, NotReady, ParentRef
from ..bridge import BridgeClosed, TrioBridge
from ..records import RecordError, receipt_state, sha256_hex
from ..tensors import TensorFileError
from .generated.fiun.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("fiun_peer.admin")


class Damaged(Exception):
    """What the store holds is not what its digest says: not the caller's fault (DATA_LOSS)."""


def _guard(fn: Callable) -> Callable:
    # Map every outcome here: context.abort() inside a handler raises a bare Exception, which the
    # last clause below would turn into INTERNAL.
    @functools.wraps(fn)
    def wrapper(self: AdminServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except NotReady as exc:  # valid, but not now: waiting or --force may change the answer
            self._count("admin_failed_precondition")
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (AgentError, RecordError, TensorFileError) as exc:  # the caller's input, not our bug
            self._count("admin_invalid_argument")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
        except Damaged as exc:
            context.abort(grpc.StatusCode.DATA_LOSS, str(exc))
        except BridgeClosed as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the peer is shutting down: {exc}")
        except grpc.RpcError:
            raise
        except Exception as exc:  # never crash the server; say what went wrong
            log.exception("admin call failed", extra={"event": "admin_error", "rpc": fn.__name__})
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    return wrapper


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """``watch(addresses)``, on the trio loop: someone is watching a request that waits on the peers
    at these gRPC addresses; the daemon syncs with them soon (their receipts are pushed to the
    requester only, and would reach a watcher elsewhere at the next anti-entropy round)."""

    def __init__(self, agent: Agent, bridge: TrioBridge, status: Callable[[], dict[str, Any]],
                 watch: Callable[[list[str]], None] | None = None) -> None:
        self._agent, self._bridge, self._status, self._watch = agent, bridge, status, watch

    def _count(self, name: str) -> None:
        self._bridge.call_sync(self._agent.count, name)

    @_guard
    def Status(self, request, context):
        s = self._bridge.call_sync(self._status)
        return admin_pb2.StatusReply(**s)

    @_guard
    def PublishModel(self, request, context):
        try:
            arch = json.loads(request.architecture_json or "null")
        except json.JSONDecodeError as exc:
            raise AgentError(f"architecture_json is not JSON: {exc}") from exc
        if not request.weights or not request.data:
            raise AgentError("weights and data (safetensors bytes) are both required")
        parents = [ParentRef(p.model_id, p.relation, p.digest, p.version) for p in request.parents]
        call = functools.partial(self._agent.publish_model, model_id=request.model_id, weights=request.weights,
                                 data=request.data, parents=parents, labels=list(request.labels), architecture=arch,
                                 head_tensors=list(request.head_tensors), format=request.format or "zoo",
                                 head=request.head)
        digest, record_id, used = self._bridge.call(call)
        return admin_pb2.PublishModelReply(model_id=request.model_id, model_digest=digest, record_id=record_id,
                                           parents=[admin_pb2.Parent(**u) for u in used])

    @_guard
    def ExportModel(self, request, context):
        # The interceptor has checked the admin credential: this is the owner asking.
        call = functools.partial(self._agent.export_target, request.model_id, digest=request.model_digest,
                                 version=request.version)
        digest, version = self._bridge.call_sync(call)
        arch = self._bridge.call_sync(functools.partial(self._agent.architecture, request.model_id))
        # Read (and for a head-only version rebuilt) here, in the gRPC thread, not on the agent's loop.
        export = self._agent.read_export(request.model_id, digest, version, arch)
        if sha256_hex(export.weights) != digest:  # not the caller's fault, and not to be handed out as if it were fine
            raise Damaged(f"version {version} of {request.model_id} ({digest[:12]}) is damaged in this peer's store")
        self._count("models_exported")
        return admin_pb2.ExportModelReply(model_id=request.model_id, model_digest=digest, version=version,
                                          weights=export.weights, format=export.format,
                                          architecture_json=json.dumps(export.architecture, sort_keys=True))

    @_guard
    def ListLineage(self, request, context):
        entries = self._bridge.call_sync(self._agent.lineage)
        return admin_pb2.ListLineageReply(models=[
            admin_pb2.LineageEntry(**{**vars(e), "parents": [admin_pb2.Parent(**p) for p in e.parents]})
            for e in entries])

    @_guard
    def RequestUnlearning(self, request, context):
        try:
            settings = json.loads(request.settings_json) if request.settings_json else None
        except json.JSONDecodeError as exc:
            raise AgentError(f"settings_json is not JSON: {exc}") from exc
        if settings is not None and not isinstance(settings, dict):
            raise AgentError("settings_json must be a JSON object")
        call = functools.partial(self._agent.request_unlearning, list(request.forget_labels), settings,
                                 request.request_id, force=request.force)
        rid, record_id, affected, discovery = self._bridge.call(call)
        return admin_pb2.RequestUnlearningReply(request_id=rid, record_id=record_id, affected_models=affected,
                                                discovery_models=discovery)

    @_guard
    def GetRequest(self, request, context):
        if not request.request_id:
            raise AgentError("request_id is required")
        def look() -> tuple:
            req, progress, done = self._agent.request_progress(request.request_id)
            if not done and self._watch is not None:
                self._watch(self._agent.awaited_peers(progress))
            return req, progress, done

        req, progress, done = self._bridge.call_sync(look)
        return admin_pb2.GetRequestReply(
            request_id=request.request_id, forget_labels=req.predicate["forget_labels"], done=done,
            settings_json=json.dumps(req.predicate["settings"], sort_keys=True),
            models=[admin_pb2.ModelProgress(**vars(p)) for p in progress])

    @_guard
    def ListReceipts(self, request, context):
        def collect():
            out = []
            for r in self._agent.receipts(request.request_id):
                p = r.predicate
                out.append(admin_pb2.Receipt(request_id=p["request_id"], model_id=p["model_id"],
                                             old_digest=p["old_digest"], new_digest=p["new_digest"],
                                             signer=r.signer, record_id=r.record_id, state=receipt_state(p),
                                             reason=p.get("reason", "")))
            return out
        return admin_pb2.ListReceiptsReply(receipts=self._bridge.call_sync(collect))
