"""gRPC health says SERVING only once the peer is ready (store open, libp2p and the agent up,
HOME/run.json written), and `fiun-peer health` turns it into an exit code (Docker HEALTHCHECK)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fiun_peer.rpc import admin_pb2
from fiun_peer.rpc.channel import insecure_channel
from fiun_peer.rpc.server import make_server, service_names, set_serving
from simulations.peers import Peer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# A real daemon whose libp2p start is held back, so the window between "gRPC server listening" and
# "peer ready" is wide enough to observe. Only the delay is artificial.
SLOW_LIBP2P = """
import sys, trio
from fiun_peer import gossip, cli
original = gossip.GossipNode.run
async def slow(self, *, task_status=trio.TASK_STATUS_IGNORED):
    await trio.sleep(float(sys.argv[1]))
    await original(self, task_status=task_status)
gossip.GossipNode.run = slow
sys.exit(cli.peer_main(sys.argv[2:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(stub, service: str = "") -> int | str:
    try:
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError as exc:
        return exc.code().name   # UNAVAILABLE before the server listens


def test_health_turns_serving_only_when_the_peer_is_ready(tmp_path: Path) -> None:
    home = tmp_path / "peer"
    cli = [sys.executable, "-m", "fiun_peer.cli"]
    subprocess.run([*cli, "init", "--home", str(home), "--name", "slow"], check=True, capture_output=True)
    target = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "peer.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_LIBP2P, "5", "run", "--home", str(home),
                                 "--grpc", target], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: list[int | str] = []
    # Reconnect fast: gRPC's default backoff (up to minutes) would sleep through the whole window.
    fast = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 100)]
    try:
        with grpc.insecure_channel(target, options=fast) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "peer.log").read_text()
                status = _check(stub)
                seen.append(status)
                if status == SERVING:
                    # Whenever health says SERVING, the peer must really be ready.
                    info = json.loads((home / "run.json").read_text())
                    assert info["grpc"] == target and info["p2p"]
                    peer = Peer("slow", home, grpc=target, admin_address=info["admin"])
                    reply = peer.admin.Status(admin_pb2.StatusRequest(), timeout=10)
                    peer.close_channel()
                    assert reply.peer_id == info["peer_id"] and reply.p2p_addresses
                    for name in service_names():
                        assert _check(stub, name) == SERVING
                    break
                time.sleep(0.05)
        assert seen[-1] == SERVING, seen[-10:]
        assert NOT_SERVING in seen, f"never saw NOT_SERVING while libp2p was held back: {set(seen)}"
        assert set(seen) <= {"UNAVAILABLE", NOT_SERVING, SERVING}
        first_ok = seen.index(SERVING)
        assert SERVING not in seen[:first_ok] and NOT_SERVING in seen[:first_ok]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_make_server_leaves_readiness_to_the_owner_of_the_health_servicer() -> None:
    hs = health.HealthServicer()
    server, port = make_server("127.0.0.1:0", health_servicer=hs)
    server.start()
    try:
        with insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert _check(stub) == NOT_SERVING
            set_serving(hs, True)
            assert _check(stub) == SERVING and _check(stub, "fiun.v1.RecordService") == SERVING
            set_serving(hs, False)
            assert _check(stub) == NOT_SERVING
    finally:
        server.stop(grace=None)


def test_health_cli_exit_codes() -> None:
    hs = health.HealthServicer()
    server, port = make_server("127.0.0.1:0", health_servicer=hs)
    server.start()
    cli = [sys.executable, "-m", "fiun_peer.cli", "health", "--target", f"127.0.0.1:{port}"]
    try:
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "NOT_SERVING" in out.stdout
        set_serving(hs, True)
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "SERVING" in out.stdout
    finally:
        server.stop(grace=None)
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60)   # nothing listens any more
    assert out.returncode == 1 and "UNAVAILABLE" in out.stderr and "Traceback" not in out.stderr
