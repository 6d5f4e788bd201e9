"""Start and stop real `fiun-peer` processes on loopback (used by tests and `fiun-sim network`).

Each peer gets its own home, a gRPC port and a libp2p address picked by the OS (port 0; the daemon
reports them in HOME/run.json). By default every peer is its own process (`fiun-peer run`); with
``peers_per_process=N`` consecutive peers share one process (``simulations.multipeer``), so large
networks fit in memory. Every process started is stopped on exit, also on error or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fiun_peer.identity import Identity
from fiun_peer.rpc.admin_client import AdminClient
from fiun_peer.rpc.record_service import sync_records

T = TypeVar("T")


@dataclass
class Peer:
    name: str
    home: Path
    proc: subprocess.Popen | None = None
    grpc: str = ""
    p2p: list[str] = field(default_factory=list)
    admin_address: str = ""   # the admin API's own listener (run.json "admin"); "" before it is up
    _client: AdminClient | None = None
    log_path: Path | None = None  # the log of the process it runs in (shared when peers share one)
    # For `start`: the address to bind gRPC and libp2p to, a command prefix (e.g. `ip netns exec NS`)
    # and extra environment (e.g. FIUN_FAILPOINTS) for this peer's own process.
    host: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def client(self) -> AdminClient:
        """This peer's admin API, with the peer's own token (HOME/admin.token)."""
        if self._client is None:
            self._client = AdminClient.for_home(self.home, self.admin_address or self.grpc)
        return self._client

    @property
    def admin(self) -> Any:
        """The raw AdminService stub on the same channel, for tests of the wire protocol itself
        (experiment code uses ``client``)."""
        return self.client.stub

    def close_channel(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _cli() -> list[str]:
    return [sys.executable, "-m", "fiun_peer.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class PeerCluster:
    """``with PeerCluster(root, names) as c:`` starts one peer per name (the first is everyone's
    bootstrap). ``peers_per_process=N`` packs N consecutive peers into one process; stopping one of
    them then stops its process-mates too. ``on_ready(peer)`` is called as each peer comes up."""

    def __init__(self, root: Path, names: list[str], *, sync_interval: float = 2.0, log_json: bool = False,
                 startup_timeout: float = 120.0, peers_per_process: int = 1,
                 on_ready: Callable[[Peer], None] | None = None) -> None:
        if peers_per_process < 1:
            raise ValueError("peers_per_process must be >= 1")
        self.root = Path(root)
        self.peers = [Peer(n, self.root / n) for n in names]
        self.sync_interval = sync_interval
        self.log_json = log_json
        self.startup_timeout = startup_timeout
        self.peers_per_process = peers_per_process
        self.on_ready = on_ready

    def __enter__(self) -> PeerCluster:
        try:
            self.init_all(self.peers)
            k = self.peers_per_process
            groups = [self.peers[i:i + k] for i in range(0, len(self.peers), k)]
            # All processes start at once: the libp2p addresses that others bootstrap to are fixed in
            # advance (a free port, and the peer id from its key); bootstrap dials retry until they are up.
            for group, (boot, port) in zip(groups, self.bootstrap_plan(groups), strict=True):
                self.start_group(group, bootstrap=boot, first_p2p_port=port)
            for p in self.peers:
                self.wait_ready(p)
        except BaseException:
            self.stop_all()
            raise
        return self

    def bootstrap_plan(self, groups: list[list[Peer]]) -> list[tuple[list[str], int]]:
        """Per process group: (its bootstrap addresses, its first peer's libp2p port; 0: any). Here a
        star: everyone bootstraps to the first peer, whose port is fixed in advance."""
        first = self.peers[0]
        port = free_port(first.host)
        boot = [p2p_address(first, port)]
        return [([], port) if i == 0 else (boot, 0) for i in range(len(groups))]

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def processes(self) -> list[subprocess.Popen]:
        """Every distinct process this cluster started (alive or not)."""
        seen: dict[int, subprocess.Popen] = {}
        for p in self.peers:
            if p.proc is not None:
                seen.setdefault(id(p.proc), p.proc)
        return list(seen.values())

    def init(self, peer: Peer) -> None:
        self.init_all([peer])

    def init_all(self, peers: list[Peer], *, parallel: int = 8) -> None:
        """`fiun-peer init` for every peer without an identity yet, a few at a time."""
        todo = [p for p in peers if not (p.home / "identity.key").exists()]
        for i in range(0, len(todo), parallel):
            procs = [(p, subprocess.Popen([*_cli(), "init", "--home", str(p.home), "--name", p.name],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
                     for p in todo[i:i + parallel]]
            for p, proc in procs:
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise RuntimeError(f"fiun-peer init for {p.name} failed ({proc.returncode}): "
                                       f"{out.decode(errors='replace')[-2000:]}")

    def start(self, peer: Peer, *, bootstrap: list[str] | None = None, p2p_port: int = 0) -> Peer:
        """Start one peer in its own process (also used to restart a stopped peer)."""
        self.init(peer)
        (peer.home / "run.json").unlink(missing_ok=True)
        args = [*peer.prefix, *_cli(), "run", "--home", str(peer.home), "--grpc", f"{peer.host}:0",
                "--p2p", f"/ip4/{peer.host}/tcp/{p2p_port}", "--sync-interval", str(self.sync_interval)]
        if peer.host not in ("127.0.0.1", "localhost"):  # a netns host: the harness reaches admin there
            args += ["--admin", f"{peer.host}:0", "--insecure"]
        if bootstrap:
            args += ["--bootstrap", *bootstrap]
        if self.log_json:
            args.append("--log-json")
        peer.log_path = peer.home / "peer.log"
        log = open(peer.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        peer.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**_env(), **peer.env},
                                     start_new_session=True)
        log.close()  # the child holds its own descriptor
        return peer

    def start_group(self, peers: list[Peer], *, bootstrap: list[str] | None = None,
                    first_p2p_port: int = 0) -> list[Peer]:
        """Start ``peers`` in one process (one `fiun-peer run` when there is just one)."""
        if len(peers) == 1:
            return [self.start(peers[0], bootstrap=bootstrap, p2p_port=first_p2p_port)]
        self.init_all(peers)
        for p in peers:
            (p.home / "run.json").unlink(missing_ok=True)
        args = [sys.executable, "-m", "simulations.multipeer", "--sync-interval", str(self.sync_interval),
                "--first-p2p-port", str(first_p2p_port)]
        if bootstrap:
            args += ["--bootstrap", *bootstrap]
        if self.log_json:
            args.append("--log-json")
        args += [str(p.home) for p in peers]
        log_path = self.root / f"process-{peers[0].name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        log.close()
        for p in peers:
            p.proc, p.log_path = proc, log_path
        return peers

    def wait_ready(self, peer: Peer) -> Peer:
        deadline = time.monotonic() + self.startup_timeout
        run_file = peer.home / "run.json"
        while time.monotonic() < deadline:
            if peer.proc is not None and peer.proc.poll() is not None:
                raise RuntimeError(f"peer {peer.name} exited with {peer.proc.returncode}:\n{self.log_tail(peer)}")
            if run_file.exists():
                info = json.loads(run_file.read_text())
                ready = not peer.grpc or peer.grpc != info["grpc"]
                peer.grpc, peer.p2p, peer.admin_address = info["grpc"], info["p2p"], info.get("admin", "")
                if ready and self.on_ready:
                    self.on_ready(peer)
                return peer
            time.sleep(0.1)
        raise TimeoutError(f"peer {peer.name} not ready after {self.startup_timeout}s:\n{self.log_tail(peer)}")

    def log_tail(self, peer: Peer, lines: int = 30) -> str:
        path = peer.log_path or peer.home / "peer.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def check_alive(self) -> None:
        """Raise with the log tail if any started peer process has exited."""
        for p in self.peers:
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"peer {p.name} exited with {p.proc.returncode}:\n{self.log_tail(p)}")

    def stop(self, peer: Peer, *, kill: bool = False, timeout: float = 10.0) -> None:
        for p in self.peers:
            if p.proc is peer.proc:
                p.close_channel()
        peer.close_channel()
        if peer.proc is not None:
            _stop_processes([peer.proc], kill=kill, timeout=timeout)

    def stop_all(self, *, timeout: float = 10.0) -> None:
        """SIGTERM every process group at once, then wait (SIGKILL after ``timeout``)."""
        for p in self.peers:
            p.close_channel()
        _stop_processes(self.processes(), timeout=timeout)

    def add(self, name: str) -> Peer:
        """Start one more peer (a late joiner), bootstrapped to the first."""
        peer = Peer(name, self.root / name)
        self.peers.append(peer)
        self.start(peer, bootstrap=self.peers[0].p2p)
        return self.wait_ready(peer)

    def wait_request(self, peer: Peer, request_id: str, *, timeout: float = 120.0,
                     on_progress: Callable[[Any], None] | None = None) -> Any:
        """Until ``peer`` reports the request done (its GetRequestReply); ``on_progress(reply)`` on each poll."""
        return wait_done([peer], request_id, timeout=timeout, on_progress=on_progress, check=self.check_alive,
                         interval=0.3, call_timeout=10)[peer.name]

    def wait_lineage(self, peer: Peer, count: int, *, timeout: float = 60.0) -> None:
        wait_lineage(peer, count, timeout=timeout, check=self.check_alive)


def poll(probe: Callable[[], T | None], *, timeout: float, interval: float, what: str | Callable[[], str],
         check: Callable[[], None] | None = None) -> T:
    """``probe()`` every ``interval`` seconds until it returns something other than None (returned);
    ``check()`` between tries (e.g. raise if a peer died); TimeoutError "``what`` after N s" at the end
    (``what`` may be a function, asked then)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what() if callable(what) else what} after {timeout}s")
        if check is not None:
            check()
        time.sleep(interval)


def wait_lineage(peer: Peer, count: int, *, timeout: float, client: AdminClient | None = None,
                 check: Callable[[], None] | None = None) -> None:
    """Until ``peer`` knows ``count`` models (through ``client``, default the peer's own)."""
    client = client or peer.client
    poll(lambda: True if len(client.list_lineage(timeout=10).models) >= count else None, timeout=timeout,
         interval=0.2, what=f"{peer.name} knows fewer than {count} models", check=check)


def wait_done(peers: list[Peer], request_id: str, *, timeout: float,
              clients: Callable[[Peer], AdminClient] | None = None, on_progress: Callable[[Any], None] | None = None,
              check: Callable[[], None] | None = None, interval: float = 0.2,
              call_timeout: float | None = None) -> dict[str, Any]:
    """Poll until every peer reports the request done (every affected model has a receipt there):
    peer name -> its GetRequestReply. A peer that has not heard of the request yet counts as not
    done; ``clients(peer)`` picks the client (default: the peer's own)."""
    done: dict[str, Any] = {}

    def probe() -> bool | None:
        for p in peers:
            if p.name not in done:
                reply = (clients(p) if clients else p.client).find_request(request_id, timeout=call_timeout)
                if reply is not None and on_progress:
                    on_progress(reply)
                if reply is not None and reply.done:
                    done[p.name] = reply
        return True if len(done) == len({p.name for p in peers}) else None

    poll(probe, timeout=timeout, interval=interval, check=check,
         what=lambda: f"request {request_id} not done on {[p.name for p in peers if p.name not in done]}")
    return done


def converged_records(peers: list[Peer], timeout: float = 60.0) -> dict[str, list[bytes]]:
    """Every peer's records once they hold the same set. A receipt goes straight to the requester
    and a new model version to no one: the other peer gets them by anti-entropy, within a round or
    two. After ``timeout`` the sets are returned as they are (the check then says what differs)."""
    deadline = time.monotonic() + timeout
    while True:
        envelopes = {p.name: sync_records(p.grpc, []) for p in peers}
        if len({frozenset(e) for e in envelopes.values()}) == 1 or time.monotonic() > deadline:
            return envelopes
        time.sleep(0.5)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS considers free right now (the peer binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def p2p_address(peer: Peer, port: int) -> str:
    """The libp2p multiaddr ``peer`` will listen on at ``port`` (its peer id comes from its key)."""
    return f"/ip4/{peer.host}/tcp/{port}/p2p/{Identity.load(peer.home).peer_id}"


def _stop_processes(procs: list[subprocess.Popen], *, kill: bool = False, timeout: float = 10.0) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    try:
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(p)
                p.wait(timeout=timeout)
    except BaseException:  # e.g. a second Ctrl-C while waiting: do not leave anything running
        for p in live:
            if p.poll() is None:
                _kill(p)
        raise


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
