"""`fiun-peer run`: wire identity, store, libp2p gossip, the gRPC server and the agent together.

trio owns the agent and libp2p; grpcio's threaded server calls in through the bridge; torch work
runs in worker threads. On start the daemon writes ``HOME/run.json`` (its real addresses and effective
configuration) once it is ready, then turns gRPC health to SERVING, and removes the file on a clean
stop (only if it still names this process). One daemon per home: ``serve`` holds an OS lock on
``HOME/daemon.lock`` (fiun_peer.home) while it runs. Until then health says NOT_SERVING (the store is open, but libp2p and the agent are not up yet).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import torch
import trio
from grpc_health.v1 import health

from .agent import Agent
from .binds import check_free, host_port, is_loopback, p2p_host_port
from .bridge import TrioBridge
from .gossip import GossipConfig, GossipError, GossipNode
from .home import RUN_FILE, HomeLock, remove_run_file
from .identity import Identity
from .join import join_via, split_bootstrap
from .metrics import GossipView, PeerMetrics
from .pacing import SyncPacer, with_retries
from .policy import RequesterPolicy
from .rpc.admin_service import AdminServicer
from .rpc.auth import DEFAULT_ADMIN_CN, AdminAuth, AuthError, ClientTLS, ServerTLS, ensure_token
from .rpc.channel import ChannelPool
from .rpc.fisher_service import FisherServicer, fetch_blob
from .rpc.peer_auth import AllowList, PeerAuth
from .rpc.record_service import RecordServicer, identify_peer, known_hellos, push_record, sync_records
from .rpc.server import admin_elsewhere_handler, make_server, set_serving
from .store import Store, write_atomic

log = logging.getLogger("fiun_peer.daemon")

#: Dial peers learned from hellos until this many are connected (GossipSub's mesh degree D=6).
PEER_DEGREE = 6
#: Concurrent direct pushes of our own records (see ``publish``). On a loaded machine a push waits
#: far longer on scheduling than it works, so more in flight shortens a request's fan-out.
PUSH_PARALLEL = 16
#: Seconds before each retry of a failed push to a peer that acts on the record (see fiun_peer.pacing).
PUSH_RETRIES = (1.0, 2.0, 4.0)
#: Peers asked per anti-entropy round (chosen at random, so every pair meets within a few rounds).
SYNC_FANOUT = 3
#: Syncs in flight at once from one peer (catch-ups with newly heard peers come in bursts).
SYNC_PARALLEL = 4
#: Quiet anti-entropy rounds stretch the interval up to this many times ``sync_interval`` (see
#: fiun_peer.pacing.SyncPacer).
SYNC_BACKOFF = 4
#: Seconds between pushing a record and gossiping it. Gossip is the safety net for peers we do not
#: know yet; every peer pays tens of ms of CPU to forward one gossip message (py-libp2p), so on
#: shared cores gossiping at once would slow the unlearning that the push has just started.
GOSSIP_DELAY = 2.0
#: Seconds between catch-up syncs with one peer while someone watches a request that waits on it:
#: its receipt reaches the watcher within about this long (pushes go to the requester only).
CATCH_UP_GAP = 1.0


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
    ``fiun_peer.peer_auth``)."""
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
    store = Store(home)
    bridge = TrioBridge()
    node: GossipNode | None = None

    push_nursery: trio.Nursery | None = None
    push_slots = trio.CapacityLimiter(PUSH_PARALLEL)
    # One per peer, for pushes, syncs and Fisher pulls; every call signed with our key, which peers
    # with an allow list require.
    channels = ChannelPool(tls=client_tls, identity=identity)
    sync_slots = trio.CapacityLimiter(SYNC_PARALLEL)

    async def push_to(target: str, data: bytes, retries: tuple[float, ...] = ()) -> None:
        async def attempt() -> None:
            await trio.to_thread.run_sync(
                functools.partial(push_record, channels.get(target), data, timeout=10.0), limiter=push_slots)

        def failed(exc: Exception) -> None:  # gossip and anti-entropy still carry it
            store.incr("push_failed")
            log.debug("push failed", extra={"event": "push_failed", "target": target, "detail": str(exc)})

        await with_retries(attempt, retries, failed)

    async def publish(data: bytes, push_to_addrs: list[str] | None = None, gossip_too: bool = True) -> None:
        # Our own records go straight to the peers that act on them (the agent names them; None:
        # every known peer) over gRPC first: one hop, whatever the gossip mesh looks like (and
        # gossip's publish may wait on a slow peer's queue), so a request's latency does not grow
        # with the lineage's depth. Gossip reaches everyone else; anti-entropy repairs the rest.
        if push_nursery is None:  # not started yet: nothing to tell anyone
            return
        # A record for everyone is not retried (gossip and sync carry it); one for the few peers
        # that act on it is, since each of them waits on it.
        retries = () if push_to_addrs is None else PUSH_RETRIES
        for target in sorted(set(agent.peers.values() if push_to_addrs is None else push_to_addrs)):
            push_nursery.start_soon(push_to, target, data, retries)
        if gossip_too and node is not None and node.is_up:
            push_nursery.start_soon(gossip, data)  # in the background: the agent does not wait on it

    async def gossip(data: bytes) -> None:
        await trio.sleep(GOSSIP_DELAY)
        try:
            await node.publish(data)  # serialised and paced inside the node, so order is kept
        except Exception as exc:  # best effort; anti-entropy sync repairs any gap
            log.warning("gossip publish failed", extra={"event": "publish_failed", "detail": str(exc)})

    def fetch(target: str, digest: str) -> bytes:
        return fetch_blob(channels.get(target), digest)

    agent = Agent(identity, store, publish=publish, fetch_blob=fetch, requesters=requester_policy)
    health_servicer = health.HealthServicer()  # make_server leaves it NOT_SERVING until we are ready

    def status() -> dict:
        return {"name": identity.name, "peer_id": identity.peer_id, "public_key": identity.public_key_hex,
                "grpc_address": grpc_address, "admin_address": admin_address,
                "p2p_addresses": node.listen_addrs if node else [],
                "connected_peers": len(node.connected_peers()) if node and node.is_up else 0,
                "records": store.record_count(), "models": agent.own_models(),
                "counters": store.counters()}

    def on_push(envelope: bytes) -> tuple[bool, str, str]:
        return bridge.call_sync(functools.partial(agent.ingest, envelope, source="push"))

    def identify() -> dict:  # RecordService.Identify, from a gRPC thread
        addrs = bridge.call_sync(lambda: node.listen_addrs if node is not None and node.is_up else [])
        if not addrs:
            raise RuntimeError("libp2p is not up yet")
        return {"peer_id": identity.peer_id, "public_key": identity.public_key_hex, "name": identity.name,
                "p2p_addresses": addrs, "grpc_address": grpc_address}

    def on_sync_hello(blob: bytes) -> None:  # from a gRPC thread (heard is defined below)
        try:
            bridge.call_sync(functools.partial(heard, blob, None))
        except Exception as exc:  # shutting down, or a hello that makes no sense: the sync goes on
            log.debug("sync hello ignored", extra={"event": "sync_hello_ignored", "detail": str(exc)})

    def peer_list() -> list[bytes]:  # RecordService.Peers, from a gRPC thread
        return bridge.call_sync(lambda: [node.announce or b"", *acted_on.values()])

    # Two listeners: the peer services, open to the network, and the admin API on its own address
    # (loopback by default), so exposing the peer port does not expose admin. One health servicer
    # answers on both: SERVING once every address is known.
    server, port = make_server(grpc_bind, FisherServicer(store),
                               RecordServicer(store, on_push, identify, on_sync_hello, peer_list), health_servicer=health_servicer,
                               tls=server_tls, peer_auth=peer_auth, count=store.incr,
                               extra_handlers=(admin_elsewhere_handler(),))
    admin_server, admin_port = make_server(admin_bind, AdminServicer(agent, bridge, status, watch=lambda t: sync_soon(t)),
                                           health_servicer=health_servicer, tls=server_tls, admin_auth=admin_auth,
                                           count=store.incr, max_workers=8)
    grpc_address = advertise_grpc or _reachable(grpc_bind, port)
    admin_address = _reachable(admin_bind, admin_port)
    server.start()
    admin_server.start()
    hello_info = {"grpc": grpc_address, "public_key": identity.public_key_hex, "name": identity.name}
    hello = json.dumps(hello_info).encode()

    async def sync_with(target: str) -> int:
        """One Sync call; returns how many records it stored."""
        try:
            envelopes = await trio.to_thread.run_sync(functools.partial(
                sync_records, channels.get(target), store.record_ids(), hello=node.announce or b""),
                limiter=sync_slots)
        except Exception as exc:  # the peer may be gone; the next round retries
            log.debug("sync failed", extra={"event": "sync_failed", "target": target, "detail": str(exc)})
            agent.contacted(target, answered=False)
            return 0
        agent.contacted(target, answered=True)
        return agent.ingest_many(envelopes, source=f"sync:{target}")

    caught_up: dict[str, float] = {}

    def sync_soon(targets: list[str]) -> None:
        """A watched request waits on these peers: sync with each now, at most once per
        CATCH_UP_GAP seconds each (a watcher polls GetRequest twice a second)."""
        now = time.monotonic()
        for target in targets:
            if push_nursery is not None and now - caught_up.get(target, -CATCH_UP_GAP) >= CATCH_UP_GAP:
                caught_up[target] = now
                push_nursery.start_soon(sync_with, target)

    async def on_message(data: bytes, sender: str) -> None:
        agent.ingest(data, source="gossip")

    dialing: set[str] = set()

    async def dial(sender: str, addrs: list[str]) -> None:
        dialing.add(sender)
        try:
            for addr in addrs:
                try:
                    await node.connect(addr)
                    return
                except GossipError as exc:
                    log.debug("dial failed", extra={"event": "dial_failed", "target": addr, "detail": str(exc)})
        finally:
            dialing.discard(sender)

    acted_on: dict[str, bytes] = {}  # gRPC address -> the hello last acted on

    def heard(blob: bytes, sender: str | None, *, catch_up: bool = True) -> None:
        """A peer's hello, by gossip (``sender``: its libp2p peer id; the gossip layer passes on only
        news: a new peer, a changed hello, a restart), with its Sync call (``sender`` None) or from a
        third peer's list (``catch_up`` False: no sync at once; with N peers learning of N peers at
        a start that would be O(N^2) syncs, and the anti-entropy rounds get there)."""
        if peer_auth is not None and not peer_auth.allows(_hello_key(blob)):  # a closed network: not one of us
            store.incr("hello_refused")
            return
        learned = agent.learn_peer(blob)
        if not learned or push_nursery is None:
            return
        addr, p2p = learned
        if sender is None:
            if acted_on.get(addr) == blob:  # it syncs every few seconds: act on news only
                return
            sender = _peer_id_of(p2p)
        acted_on[addr] = blob
        # Catch up with a new or restarted peer at once; our Sync call also hands it our hello,
        # which is how a newcomer learns of everybody (the gossip layer no longer replies).
        if catch_up:
            nursery.start_soon(sync_with, addr)
        if len(acted_on) == 1:  # the first peer we hear of: ask it whom it knows
            nursery.start_soon(exchange_peers, addr)
        # Without this every peer hangs off its bootstrap peer alone (a star): GossipSub prunes the
        # hub's mesh, and most records then travel only by the slower anti-entropy sync.
        connected = set(node.connected_peers())
        wanted = len(connected) + len(dialing) < PEER_DEGREE
        # Only the smaller peer id dials: two peers dialling each other at once end up with two
        # connections, and when one closes py-libp2p's pubsub drops the peer for good.
        if p2p and sender and wanted and identity.peer_id < sender and sender not in connected \
                and sender not in dialing:
            nursery.start_soon(dial, sender, p2p)

    async def on_hello(blob: bytes, sender: str) -> None:
        heard(blob, sender)

    async def exchange_peers(target: str) -> None:
        # Hellos travel by gossip once per start; one missed (a lost message, a peer that started
        # later) would leave two peers unaware of each other until the next periodic hello. Asking
        # one random peer per round whom it knows spreads every address in a few rounds.
        try:
            hellos = await trio.to_thread.run_sync(functools.partial(known_hellos, channels.get(target)))
        except Exception as exc:  # the peer may be gone, or older: the next round asks another
            log.debug("peer exchange failed", extra={"event": "peers_failed", "target": target, "detail": str(exc)})
            return
        for blob in hellos:
            heard(blob, None, catch_up=False)

    syncing: set[str] = set()
    pacer = SyncPacer(sync_interval, SYNC_BACKOFF)

    async def sync_once(target: str) -> int:
        if target in syncing:  # still waiting on an unreachable peer from an earlier round
            return 0
        syncing.add(target)
        try:
            return await sync_with(target)
        finally:
            syncing.discard(target)

    async def sync_round(targets: list[str]) -> None:
        # One after another: each call names what the previous ones brought, so a burst of new
        # records (a request makes three per affected model) comes once per round, not once per
        # target. Three at once sent every peer the same records three times, and at 64 peers on
        # 2 cores that redundant traffic kept the machine saturated for minutes.
        stored = 0
        for target in targets:
            stored += await sync_once(target)
        pacer.round_done(stored)

    async def anti_entropy() -> None:
        while True:
            await trio.sleep(pacer.gap())
            # Each round in its own task: in a partition, calls to the far side hang until they fail,
            # and must not hold up the next rounds, which keep this side converging.
            # A few random peers per round, not all: all-pairs sync is O(N^2) work per interval.
            targets = sorted(set(agent.peers.values()))
            chosen = random.sample(targets, min(SYNC_FANOUT, len(targets)))
            if chosen:
                nursery.start_soon(sync_round, chosen)
                nursery.start_soon(exchange_peers, chosen[0])

    def allow_p2p(peer_id: str) -> bool:
        if peer_auth is None or peer_auth.allows_peer_id(peer_id):
            return True
        store.incr("p2p_refused")
        return False

    node = GossipNode(identity.libp2p_keypair(), p2p_listen, on_message=on_message, on_hello=on_hello,
                      bootstrap=maddrs, announce=hello, advertise_addrs=list(advertise_p2p or []),
                      # No replies and no periodic hello: a newcomer announces itself once (on its
                      # first connection), then peers learn of each other by Sync and Peers calls.
                      config=GossipConfig(hello_replies=False, hello_interval=None), allow_peer=allow_p2p)

    def gossip_sample() -> tuple[int, int]:  # for the metrics scrape thread
        def sample() -> tuple[int, int]:
            return (len(node.connected_peers()), len(node.mesh_peers())) if node.is_up else (0, 0)
        return bridge.call_sync(sample)

    peer_metrics = PeerMetrics(store, identity.name, gossip=GossipView(gossip_sample),
                               known_peers=lambda: len(agent.peers))
    agent.on_applied = peer_metrics.observe_apply
    run_file = home / RUN_FILE
    try:
        if metrics:
            peer_metrics.serve(metrics)
        # Catch SIGTERM/SIGINT from the start: one that arrives while starting (or right after
        # run.json appears) is a clean stop, not the default kill.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
                push_nursery = nursery
                await nursery.start(node.run)
                # Our libp2p addresses are known once the host listens: hellos carry them, so peers
                # that hear of us can dial us directly.
                node.announce = json.dumps({**hello_info, "p2p": node.listen_addrs}).encode()
                await nursery.start(agent.run)
                nursery.start_soon(anti_entropy)
                for target in grpc_targets:
                    nursery.start_soon(functools.partial(
                        join_via, target, own_peer_id=identity.peer_id, connected=node.connected_peers,
                        connect=node.connect, identify=lambda t: identify_peer(channels.get(t))))
                write_atomic(run_file, json.dumps({"grpc": grpc_address, "admin": admin_address,
                                                   "p2p": node.listen_addrs,
                                                   "peer_id": identity.peer_id, "pid": os.getpid(),
                                                   "metrics": peer_metrics.address,
                                                   "config": effective_config or {},
                                                   "started_at": time.time()}).encode())
                set_serving(health_servicer, True)  # after run.json: SERVING means every address is known
                log.info("peer up", extra={"event": "peer_up", "grpc": grpc_address, "admin": admin_address,
                                           "p2p": ",".join(node.listen_addrs), "metrics": peer_metrics.address})
                agent.kick()  # resume whatever a previous run left half done
    finally:
        health_servicer.enter_graceful_shutdown()
        bridge.close()
        admin_server.stop(grace=1)
        server.stop(grace=1).wait()
        channels.close()
        peer_metrics.close()
        remove_run_file(home)  # ours only: never another process's (the lock should make that moot)
        store.close()


async def _stop_on_signal(signals, scope: trio.CancelScope) -> None:
    async for sig in signals:
        log.info("stopping", extra={"event": "peer_stopping", "signal": signal.Signals(sig).name})
        scope.cancel()
        return


def _hello_key(blob: bytes) -> str:
    """The public key a hello claims, or "" (the agent counts malformed hellos itself)."""
    try:
        return str(json.loads(blob)["public_key"])
    except (ValueError, KeyError, TypeError):
        return ""


def _peer_id_of(p2p_addrs: list[str]) -> str:
    """The peer id at the end of a libp2p address (``.../p2p/<id>``), or "" if there is none."""
    for addr in p2p_addrs:
        head, sep, peer_id = addr.rpartition("/p2p/")
        if sep and peer_id and "/" not in peer_id:
            return peer_id
    return ""


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
