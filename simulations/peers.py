"""Start and stop real `fiun-peer` processes on loopback (used by tests and `fiun-sim network`).

Each peer gets its own home, a gRPC port and a libp2p address picked by the OS (port 0; the daemon
reports them in HOME/run.json). Every process started is stopped on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from fiun_peer.rpc.channel import insecure_channel
from fiun_peer.rpc.generated.fiun.v1 import admin_pb2, admin_pb2_grpc


@dataclass
class Peer:
    name: str
    home: Path
    proc: subprocess.Popen | None = None
    grpc: str = ""
    p2p: list[str] = field(default_factory=list)
    _channel: grpc.Channel | None = None

    @property
    def admin(self) -> admin_pb2_grpc.AdminServiceStub:
        if self._channel is None:
            self._channel = insecure_channel(self.grpc)
        return admin_pb2_grpc.AdminServiceStub(self._channel)

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _cli() -> list[str]:
    return [sys.executable, "-m", "fiun_peer.cli"]


class PeerCluster:
    """``with PeerCluster(root, n) as c:`` starts n peers (the first is everyone's bootstrap)."""

    def __init__(self, root: Path, names: list[str], *, sync_interval: float = 2.0, log_json: bool = False,
                 startup_timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.peers = [Peer(n, self.root / n) for n in names]
        self.sync_interval = sync_interval
        self.log_json = log_json
        self.startup_timeout = startup_timeout

    def __enter__(self) -> PeerCluster:
        try:
            for i, p in enumerate(self.peers):
                self.start(p, bootstrap=self.peers[0].p2p if i else [])
                if i == 0:
                    self.wait_ready(p)
            for p in self.peers:
                self.wait_ready(p)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def init(self, peer: Peer) -> None:
        if not (peer.home / "identity.key").exists():
            subprocess.run([*_cli(), "init", "--home", str(peer.home), "--name", peer.name], check=True,
                           capture_output=True)

    def start(self, peer: Peer, *, bootstrap: list[str] | None = None) -> Peer:
        self.init(peer)
        (peer.home / "run.json").unlink(missing_ok=True)
        args = [*_cli(), "run", "--home", str(peer.home), "--grpc", "127.0.0.1:0",
                "--sync-interval", str(self.sync_interval)]
        if bootstrap:
            args += ["--bootstrap", *bootstrap]
        if self.log_json:
            args.append("--log-json")
        log = open(peer.home / "peer.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        peer.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        return peer

    def wait_ready(self, peer: Peer) -> Peer:
        deadline = time.monotonic() + self.startup_timeout
        run_file = peer.home / "run.json"
        while time.monotonic() < deadline:
            if peer.proc is not None and peer.proc.poll() is not None:
                raise RuntimeError(f"peer {peer.name} exited with {peer.proc.returncode}:\n{self.log_tail(peer)}")
            if run_file.exists():
                info = json.loads(run_file.read_text())
                peer.grpc, peer.p2p = info["grpc"], info["p2p"]
                return peer
            time.sleep(0.1)
        raise TimeoutError(f"peer {peer.name} not ready after {self.startup_timeout}s:\n{self.log_tail(peer)}")

    def log_tail(self, peer: Peer, lines: int = 30) -> str:
        path = peer.home / "peer.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, peer: Peer, *, kill: bool = False, timeout: float = 10.0) -> None:
        peer.close_channel()
        if peer.proc is None or peer.proc.poll() is not None:
            return
        try:
            os.killpg(peer.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            peer.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(peer.proc.pid, signal.SIGKILL)
            peer.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for p in self.peers:
            self.stop(p)

    def add(self, name: str) -> Peer:
        """Start one more peer (a late joiner), bootstrapped to the first."""
        peer = Peer(name, self.root / name)
        self.peers.append(peer)
        self.start(peer, bootstrap=self.peers[0].p2p)
        return self.wait_ready(peer)

    def wait_request(self, peer: Peer, request_id: str, *, timeout: float = 120.0,
                     on_progress=None) -> admin_pb2.GetRequestReply:
        deadline = time.monotonic() + timeout
        reply = None
        while time.monotonic() < deadline:
            try:
                reply = peer.admin.GetRequest(admin_pb2.GetRequestRequest(request_id=request_id), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                if on_progress:
                    on_progress(reply)
                if reply.done:
                    return reply
            time.sleep(0.3)
        raise TimeoutError(f"request {request_id} not done on {peer.name} after {timeout}s: {reply}")

    def wait_lineage(self, peer: Peer, count: int, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = len(peer.admin.ListLineage(admin_pb2.ListLineageRequest(), timeout=10).models)
            if n >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{peer.name} knows fewer than {count} models after {timeout}s")
