"""gRPC on a real loopback port: chunked blob fetch with digest checks, record sync, health, reflection."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from record_support import serve_fisher

from fiun_peer import records as R
from fiun_peer.identity import Identity
from fiun_peer.rpc import fisher_pb2, fisher_pb2_grpc
from fiun_peer.rpc.channel import ChannelPool, insecure_channel
from fiun_peer.rpc.fisher_service import CHUNK_BYTES, BlobDigestMismatch, FisherServicer, fetch_blob
from fiun_peer.rpc.record_service import (
    MAX_HELLO_BYTES,
    RecordServicer,
    known_hellos,
    push_record,
    sync_records,
)
from fiun_peer.rpc.server import make_server
from fiun_peer.store import Store

ALICE = Identity.from_seed(bytes(range(32)), "alice")


class Peer:
    def __init__(self, home: Path) -> None:
        self.store = Store(home)
        self.pushed: list[bytes] = []
        self.hellos: list[bytes] = []
        self.server, self.port = make_server("127.0.0.1:0", FisherServicer(self.store),
                                             RecordServicer(self.store, self.on_push, on_hello=self.hellos.append,
                                                            peers=lambda: [b"own", *self.hellos, b""]))
        self.server.start()
        self.target = f"127.0.0.1:{self.port}"

    def on_push(self, envelope: bytes) -> tuple[bool, str, str]:
        self.pushed.append(envelope)
        try:
            record = R.parse_record(envelope)
        except R.RecordError as exc:
            return False, "", exc.reason
        self.store.add_record(record)
        return True, record.record_id, ""


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    p = Peer(tmp_path / "peer")
    yield p
    p.server.stop(grace=None)
    p.store.close()


def test_fetch_large_blob_in_chunks(peer: Peer) -> None:
    data = os.urandom(8 * 1024 * 1024 + 12345)  # over gRPC's default 4 MiB message limit
    digest = serve_fisher(peer.store, data)
    assert peer.port > 0
    assert fetch_blob(peer.target, digest) == data
    with grpc.insecure_channel(peer.target) as channel:  # default limits: chunks must fit them
        chunks = list(fisher_pb2_grpc.FisherServiceStub(channel).Fetch(
            fisher_pb2.FetchRequest(digest=digest), timeout=30))
        assert fetch_blob(channel, digest) == data
    assert len(chunks) == 9
    assert all(len(c.data) <= CHUNK_BYTES == 1 << 20 for c in chunks)
    assert [c.offset for c in chunks] == [i * CHUNK_BYTES for i in range(9)]
    assert {c.total_size for c in chunks} == {len(data)}


def test_fetch_empty_blob(peer: Peer) -> None:
    digest = serve_fisher(peer.store, b"")
    assert fetch_blob(peer.target, digest) == b""


def test_unknown_digest_is_not_found(peer: Peer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        fetch_blob(peer.target, hashlib.sha256(b"absent").hexdigest())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no Fisher" in info.value.details()


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "abc", ""])
def test_bad_digest_is_invalid_argument(peer: Peer, bad: str) -> None:
    with insecure_channel(peer.target) as channel, pytest.raises(grpc.RpcError) as info:
        list(fisher_pb2_grpc.FisherServiceStub(channel).Fetch(fisher_pb2.FetchRequest(digest=bad)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        fetch_blob(peer.target, bad)  # the client refuses before asking


def test_corrupted_blob_is_detected_by_the_client(peer: Peer) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 5)
    digest = serve_fisher(peer.store, data)
    peer.store.blob_path(digest).write_bytes(os.urandom(len(data)))  # bit rot / hostile server
    with pytest.raises(BlobDigestMismatch) as info:
        fetch_blob(peer.target, digest)
    assert info.value.expected == digest and info.value.actual != digest


def test_health_serving(peer: Peer) -> None:
    with insecure_channel(peer.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fiun.v1.FisherService", "fiun.v1.RecordService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="fiun.v1.AdminService"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # not registered on this server


def test_reflection_lists_services(peer: Peer) -> None:
    with insecure_channel(peer.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"fiun.v1.FisherService", "fiun.v1.RecordService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_sync_streams_missing_records_oldest_first(peer: Peer) -> None:
    records = [R.build_receipt(ALICE, request_id=f"r{i}", model_id="m", old_digest="0" * 64,
                               new_digest=hashlib.sha256(bytes([i])).hexdigest()) for i in range(5)]
    for record in records:
        peer.store.add_record(record)
    assert sync_records(peer.target, []) == [r.envelope for r in records]
    have = {records[0].record_id, records[3].record_id, "f" * 64}
    assert sync_records(peer.target, have) == [records[i].envelope for i in (1, 2, 4)]
    assert sync_records(peer.target, peer.store.record_ids()) == []


def test_sync_hands_the_callers_hello_to_the_server(peer: Peer) -> None:
    record = R.build_receipt(ALICE, request_id="r", model_id="m", old_digest="0" * 64, new_digest="1" * 64)
    peer.store.add_record(record)
    assert sync_records(peer.target, []) == [record.envelope]
    assert peer.hellos == []                       # no hello, nothing learned
    hello = b'{"grpc": "127.0.0.1:1", "public_key": "ab"}'
    assert sync_records(peer.target, [], hello=hello) == [record.envelope]
    assert peer.hellos == [hello]
    with pytest.raises(grpc.RpcError) as err:      # a "hello" far larger than one is refused whole
        sync_records(peer.target, [], hello=b"x" * (MAX_HELLO_BYTES + 1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hello" in err.value.details()
    assert peer.hellos == [hello]


def test_peers_lists_the_hellos_the_server_holds(peer: Peer, tmp_path: Path) -> None:
    assert known_hellos(peer.target) == [b"own"]   # empty ones are not served
    sync_records(peer.target, [], hello=b'{"n": 1}')
    assert known_hellos(peer.target) == [b"own", b'{"n": 1}']
    store = Store(tmp_path / "plain")                # a server without a peer list says so
    server, port = make_server("127.0.0.1:0", RecordServicer(store, peer.on_push))
    server.start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            known_hellos(f"127.0.0.1:{port}")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
        store.close()


def test_channel_pool_keeps_one_channel_per_target(peer: Peer) -> None:
    pool = ChannelPool()
    channel = pool.get(peer.target)
    assert pool.get(peer.target) is channel and pool.get("127.0.0.1:1") is not channel
    record = R.build_receipt(ALICE, request_id="r", model_id="m", old_digest="0" * 64, new_digest="1" * 64)
    for _ in range(3):                             # the same channel serves call after call
        assert push_record(channel, record.envelope) == (True, record.record_id, "")
    assert sync_records(pool.get(peer.target), []) == [record.envelope]
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.get(peer.target)
    with pytest.raises(ValueError):                # closed channels refuse further calls
        push_record(channel, record.envelope)


def test_push_delegates_to_handler(peer: Peer) -> None:
    record = R.build_receipt(ALICE, request_id="r", model_id="m", old_digest="0" * 64, new_digest="1" * 64)
    assert push_record(peer.target, record.envelope) == (True, record.record_id, "")
    assert peer.store.has_record(record.record_id)
    assert push_record(peer.target, b"junk") == (False, "", "malformed")
    assert peer.pushed == [record.envelope, b"junk"]


def test_make_server_rejects_taken_port_and_unknown_servicer(peer: Peer) -> None:
    with pytest.raises(OSError):
        make_server(peer.target, FisherServicer(peer.store))
    with pytest.raises(TypeError):
        make_server("127.0.0.1:0", object())


def test_server_accepts_messages_over_the_default_4mib_limit(peer: Peer) -> None:
    big = b"x" * (6 * 1024 * 1024)  # e.g. an admin PublishModel with weights and data
    assert push_record(peer.target, big) == (False, "", "too_large")
    assert peer.pushed == [big]


def test_admin_servicer_registers() -> None:
    from fiun_peer.rpc import admin_pb2, admin_pb2_grpc

    server, port = make_server("127.0.0.1:0", admin_pb2_grpc.AdminServiceServicer())
    server.start()
    try:
        with insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="fiun.v1.AdminService"), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as info:  # the generated base class answers UNIMPLEMENTED
                admin_pb2_grpc.AdminServiceStub(channel).Status(admin_pb2.StatusRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(grace=None)
