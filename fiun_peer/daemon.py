"""`fiun-peer run`: wire identity, store, libp2p gossip, the gRPC servers and the agent together.

trio owns the agent and libp2p; grpcio's threaded server calls in through the bridge; torch work
runs in worker threads. On start the daemon writes ``HOME/run.json`` (its real addresses and effective
configuration) once it is ready, then turns gRPC health to SERVING, and removes the file on a clean
stop (only if it still names this process). One daemon per home: ``serve`` holds an OS lock on
``HOME/daemon.lock`` (fiun_peer.home) while it runs. Until then health says NOT_SERVING (the store is
open, but libp2p and the agent are not up yet).

This module is wiring only; each concern has its own module (docs/architecture.md):
``fiun_peer.membership`` (hellos, dialling, peer exchange, joining), ``fiun_peer.address_book`` (the
known peers), ``fiun_peer.anti_entropy`` (sync rounds and catch-ups), ``fiun_peer.delivery`` (push,
gossip, retries, Fisher pulls) and ``fiun_peer.gossip`` (the libp2p node).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trio

from .address_book import AddressBook
from .agent import Agent
from .anti_entropy import AntiEntropy
from .binds import check_free, host_port, is_loopback, p2p_host_port
from .bridge import TrioBridge
from .delivery import Delivery, FisherFetcher
from .gossip import GossipNode
from .home import RUN_FILE, HomeLock, remove_run_file
from .identity import Identity
from .join import split_bootstrap
from .membership import Hello, Membership
from .metrics import GossipView, PeerMetrics
from .policy import RequesterPolicy
from .rpc.admin_service import AdminServicer
from .rpc.auth import DEFAULT_ADMIN_CN, AdminAuth, AuthError, ClientTLS, ServerTLS, ensure_token
from .rpc.channel import ChannelPool
from .rpc.fisher_service import FisherServicer
from .rpc.peer_auth import AllowList, PeerAuth
from .rpc.record_service import RecordServicer
from .rpc.server import admin_elsewhere_handler, make_server, new_health, set_serving
from .store import Store, write_atomic

log = logging.getLogger("fiun_peer.daemon")


async def serve(home: Path, *, home_lock: HomeLock | None = None, **kwargs: Any) -> None:
    """Run one peer until SIGTERM/SIGINT, holding the home's lock throughout (``home_lock``: one the
    caller already holds, e.g. the CLI, which takes it before loading torch so a second start fails
    at once). Keyword arguments: see :func:`_serve`."""
    lock = home_lock if home_lock is not None else HomeLock.acquire(home)
    try:
        await _serve(home, **kwargs)
    finally:
        if home_lock is None:
            lock.release()


async def _serve(home: Path, *, grpc_bind: str = "127.0.0.1:0", admin_bind: str = "127.0.0.1:0",
                insecure: bool = False, p2p_listen: str = "/ip4/127.0.0.1/tcp/0",
                bootstrap: list[str] | None = None, sync_interval: float = 5.0,
                requesters: list[str] | None = None, admin_cns: list[str] | None = None,
                tls_cert: Path | None = None, tls_key: Path | None = None, tls_client_ca: Path | None = None,
                tls_ca: Path | None = None, metrics: str = "", advertise_grpc: str = "",
                advertise_p2p: list[str] | None = None, allow_peers: Path | None = None,
                effective_config: dict | None = None) -> None:
    """Run one peer until SIGTERM/SIGINT. ``bootstrap`` entries are multiaddrs ending in /p2p/ID or
    gRPC ``host:port`` addresses of peers (see ``fiun_peer.join``); ``metrics`` is ``HOST:PORT`` for a
    Prometheus endpoint (empty: none); ``advertise_*`` are the addresses other peers should use when
    the bind addresses are not reachable as such (0.0.0.0 in a container); ``admin_bind`` is the admin
    API's own listener, which must be loopback, TLS, or ``insecure`` (plaintext on purpose);
    ``allow_peers`` is a file
    of the peer keys that may call RecordService and FisherService (None: anyone; see
    ``fiun_peer.rpc.peer_auth``)."""
    torch.set_num_threads(1)  # the same thread count as the centralized reference: same bits
    maddrs, grpc_targets = split_bootstrap(list(bootstrap or []))
    # Malformed addresses and ports in use, in the operator's terms, before grpc-core or libp2p say it in theirs.
    check_free(*host_port(grpc_bind, "--grpc"), "--grpc")
    check_free(*host_port(admin_bind, "--admin"), "--admin")
    if p2p_bind := p2p_host_port(p2p_listen):
        check_free(*p2p_bind, "--p2p")
    if metrics:
        check_free(*host_port(metrics, "--metrics"), "--metrics")
    identity = Identity.load(home)
    # Security settings first: a peer that cannot authenticate its admin API must not start.
    security = _Security.load(home, identity, admin_bind=admin_bind, insecure=insecure, requesters=requesters,
                              admin_cns=admin_cns, tls_cert=tls_cert, tls_key=tls_key,
                              tls_client_ca=tls_client_ca, tls_ca=tls_ca, allow_peers=allow_peers)
    peer = _Peer(home, identity, Store(home), security, p2p_listen=p2p_listen, bootstrap=maddrs,
                 advertise_p2p=list(advertise_p2p or []), sync_interval=sync_interval)
    peer.listen(grpc_bind, admin_bind, advertise_grpc)
    try:
        await peer.run(grpc_targets, metrics=metrics, effective_config=effective_config or {})
    finally:
        peer.close()


@dataclass(frozen=True)
class _Security:
    """Who may call which API, and the TLS each listener and client uses."""

    admin_auth: AdminAuth
    requesters: RequesterPolicy
    peer_auth: PeerAuth | None
    server_tls: ServerTLS | None
    client_tls: ClientTLS | None

    @classmethod
    def load(cls, home: Path, identity: Identity, *, admin_bind: str, insecure: bool,
             requesters: list[str] | None, admin_cns: list[str] | None, tls_cert: Path | None,
             tls_key: Path | None, tls_client_ca: Path | None, tls_ca: Path | None,
             allow_peers: Path | None) -> _Security:
        """The settings, checked; raises ``AuthError`` for a combination that would not be safe."""
        admin_auth = AdminAuth(token=ensure_token(home), admin_cns=frozenset(admin_cns or [DEFAULT_ADMIN_CN]))
        requester_policy = RequesterPolicy.of(requesters or [])
        peer_auth = PeerAuth(AllowList.from_file(allow_peers), own_key=identity.public_key_hex) if allow_peers else None
        if (tls_cert is None) != (tls_key is None):
            raise AuthError("TLS needs both --tls-cert and --tls-key")
        if tls_client_ca is not None and tls_cert is None:
            raise AuthError("--tls-client-ca (mTLS) needs a server certificate: --tls-cert and --tls-key")
        server_tls = ServerTLS.from_files(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
        if server_tls is None and not insecure and not is_loopback(host_port(admin_bind, "--admin")[0]):
            raise AuthError(f"--admin {admin_bind} would serve the admin API in plaintext beyond this machine: "
                            "give --tls-cert/--tls-key (clients then use --tls-ca), keep --admin on loopback "
                            "(the default), or pass --insecure to accept plaintext")
        # Peers' clients verify other peers' servers with --tls-ca and present our own certificate (which
        # an mTLS peer requires of every client).
        client_tls = ClientTLS.from_files(tls_ca, tls_cert, tls_key) if tls_ca else None
        return cls(admin_auth, requester_policy, peer_auth, server_tls, client_tls)


class _Peer:
    """One peer's parts, wired: built, then ``listen`` (gRPC up, NOT_SERVING), ``run`` until
    stopped, ``close``. The gRPC handlers below run on grpcio's threads and reach the trio side
    only through the bridge."""

    def __init__(self, home: Path, identity: Identity, store: Store, security: _Security, *, p2p_listen: str,
                 bootstrap: list[str], advertise_p2p: list[str], sync_interval: float) -> None:
        self.home, self.identity, self.store, self.security = home, identity, store, security
        self.bridge = TrioBridge()
        # One per peer, for pushes, syncs and Fisher pulls; every call signed with our key, which peers
        # with an allow list require.
        self.channels = ChannelPool(tls=security.client_tls, identity=identity)
        self.book = AddressBook(identity.public_key_hex)
        self.membership = Membership(identity, store, self.book, self.channels, peer_auth=security.peer_auth)
        self.node = GossipNode(identity.libp2p_keypair(), p2p_listen, on_message=self._gossiped,
                               on_hello=self.membership.hellos.received, bootstrap=bootstrap,
                               advertise_addrs=advertise_p2p, allow_peer=self.membership.allow_p2p)
        self.delivery = Delivery(store, self.book, self.channels, self.node)
        self.agent = Agent(identity, store, publisher=self.delivery, fetcher=FisherFetcher(self.channels),
                           book=self.book, requesters=security.requesters)
        self.anti_entropy = AntiEntropy(store, self.agent, self.book, self.channels, sync_interval,
                                        hello=self.membership.own_blob, exchange=self.membership.exchange_peers)
        self.health = new_health()  # make_server leaves it NOT_SERVING until we are ready
        self.metrics = PeerMetrics(store, identity.name, gossip=GossipView(self._gossip_sample),
                                   known_peers=lambda: len(self.book.peers))
        self.agent.on_applied = self.metrics.observe_apply
        self.grpc_address = self.admin_address = ""

    def listen(self, grpc_bind: str, admin_bind: str, advertise_grpc: str) -> None:
        """Start both gRPC listeners; our hello then knows our gRPC address."""
        # Two listeners: the peer services, open to the network, and the admin API on its own address
        # (loopback by default), so exposing the peer port does not expose admin. One health servicer
        # answers on both: SERVING once every address is known.
        sec, store = self.security, self.store
        self._server, port = make_server(
            grpc_bind, FisherServicer(store),
            RecordServicer(store, self._pushed, self._identify, self._sync_hello, self._peer_list),
            health_servicer=self.health, tls=sec.server_tls, peer_auth=sec.peer_auth, count=store.incr,
            extra_handlers=(admin_elsewhere_handler(),))
        self._admin_server, admin_port = make_server(
            admin_bind, AdminServicer(self.agent, self.bridge, self._status, watch=self.anti_entropy.catch_up_soon),
            health_servicer=self.health, tls=sec.server_tls, admin_auth=sec.admin_auth, count=store.incr,
            max_workers=8)
        self.grpc_address = advertise_grpc or _reachable(grpc_bind, port)
        self.admin_address = _reachable(admin_bind, admin_port)
        self._server.start()
        self._admin_server.start()
        self.membership.own_hello = Hello(self.grpc_address, self.identity.public_key_hex, self.identity.name)

    async def run(self, grpc_targets: list[str], *, metrics: str, effective_config: dict) -> None:
        """Start libp2p, the agent and the network roles; write run.json, then SERVING; run until
        SIGTERM/SIGINT."""
        if metrics:
            self.metrics.serve(metrics)
        # Catch SIGTERM/SIGINT from the start: one that arrives while starting (or right after
        # run.json appears) is a clean stop, not the default kill.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                self.delivery.start(nursery)
                self.anti_entropy.start(nursery)
                self.membership.start(nursery, self.node, catch_up=self.anti_entropy.sync_with)
                await nursery.start(self.node.run)
                # Our libp2p addresses are known once the host listens: hellos carry them, so peers
                # that hear of us can dial us directly.
                own = self.membership.own_hello
                assert own is not None
                self.membership.own_hello = dataclasses.replace(own, p2p=tuple(self.node.listen_addrs))
                await nursery.start(self.agent.run)
                nursery.start_soon(self.anti_entropy.run)
                self.membership.join(grpc_targets)
                write_atomic(self.home / RUN_FILE, json.dumps({
                    "grpc": self.grpc_address, "admin": self.admin_address, "p2p": self.node.listen_addrs,
                    "peer_id": self.identity.peer_id, "pid": os.getpid(), "metrics": self.metrics.address,
                    "config": effective_config, "started_at": time.time()}).encode())
                set_serving(self.health, True)  # after run.json: SERVING means every address is known
                log.info("peer up", extra={"event": "peer_up", "grpc": self.grpc_address,
                                           "admin": self.admin_address, "p2p": ",".join(self.node.listen_addrs),
                                           "metrics": self.metrics.address})
                self.agent.kick()  # resume whatever a previous run left half done

    def close(self) -> None:
        self.health.enter_graceful_shutdown()
        self.bridge.close()
        self._admin_server.stop(grace=1)
        self._server.stop(grace=1).wait()
        self.channels.close()
        self.metrics.close()
        remove_run_file(self.home)  # ours only: never another process's (the lock should make that moot)
        self.store.close()

    # -- handlers: from libp2p (trio thread) and gRPC (its threads) ---------------------------

    async def _gossiped(self, data: bytes, sender: str) -> None:
        self.agent.ingest(data, source="gossip")

    def _pushed(self, envelope: bytes) -> tuple[bool, str, str]:  # RecordService.Push
        return self.bridge.call_sync(functools.partial(self.agent.ingest, envelope, source="push"))

    def _identify(self) -> dict:  # RecordService.Identify
        node = self.node
        addrs = self.bridge.call_sync(lambda: node.listen_addrs if node.is_up else [])
        if not addrs:
            raise RuntimeError("libp2p is not up yet")
        return {"peer_id": self.identity.peer_id, "public_key": self.identity.public_key_hex,
                "name": self.identity.name, "p2p_addresses": addrs, "grpc_address": self.grpc_address}

    def _sync_hello(self, blob: bytes) -> None:  # the hello of a RecordService.Sync caller
        try:
            self.bridge.call_sync(functools.partial(self.membership.heard, blob, None))
        except Exception as exc:  # shutting down, or a hello that makes no sense: the sync goes on
            log.debug("sync hello ignored", extra={"event": "sync_hello_ignored", "detail": str(exc)})

    def _peer_list(self) -> list[bytes]:  # RecordService.Peers
        return self.bridge.call_sync(self.membership.peer_list)

    def _status(self) -> dict:  # AdminService.Status
        node = self.node
        return {"name": self.identity.name, "peer_id": self.identity.peer_id,
                "public_key": self.identity.public_key_hex, "grpc_address": self.grpc_address,
                "admin_address": self.admin_address, "p2p_addresses": node.listen_addrs,
                "connected_peers": len(node.connected_peers()) if node.is_up else 0,
                "records": self.store.record_count(),
                "models": self.agent.own_models(),
                "counters": self.store.counters()}

    def _gossip_sample(self) -> tuple[int, int]:  # for the metrics scrape thread
        def sample() -> tuple[int, int]:
            node = self.node
            return (len(node.connected_peers()), len(node.mesh_peers())) if node.is_up else (0, 0)
        return self.bridge.call_sync(sample)


async def _stop_on_signal(signals, scope: trio.CancelScope) -> None:
    async for sig in signals:
        log.info("stopping", extra={"event": "peer_stopping", "signal": signal.Signals(sig).name})
        scope.cancel()
        return


def _reachable(bind: str, port: int) -> str:
    """The gRPC address to tell other peers: the bind host, or this machine's name for a wildcard bind."""
    host = bind.rsplit(":", 1)[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"{host}:{port}"


def run(home: Path, **kwargs: Any) -> None:
    """``serve`` on a new trio loop. A failure that ends the daemon from inside a task group comes
    out plainly (not wrapped in an exception group), so the CLI can say it in one line."""
    try:
        trio.run(functools.partial(serve, home, **kwargs))
    except BaseExceptionGroup as group:
        leaf = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, BaseExceptionGroup):
            raise
        raise leaf from group
