"""The libp2p side of a peer: one host, GossipSub on two topics, running on trio.

``GossipNode`` owns a py-libp2p host (Ed25519 identity, Noise only, yamux only) and a GossipSub
router.  It carries small payloads only (records, digests): tensors travel over gRPC.

Topics
------
* ``topic`` (default ``fiun/records/v1``): application payloads, delivered to ``on_message``.
* ``fiun/hello/v1`` (``HELLO_TOPIC``): hello frames, handed raw to ``on_hello(frame, origin peer id)``
  and sent with ``publish_hello``. What a hello says, when ours goes out and which ones are news is
  ``fiun_peer.membership``'s business; this node only carries them, and tells it when the first
  neighbour listens on the topic (``wait_for_hello_listener``), so the first hello is not lost.
  The origin peer id comes from the pubsub message signature (strict signing), so a frame cannot
  be spoofed for another peer id.

py-libp2p 0.8.1 traps this module works around (see docs/architecture.md):
* GossipSub spam protection drops > ``max_messages_per_topic_per_second`` (default 10) messages
  per forwarding peer and topic *silently*; it even applies to our own publishes.  We raise it
  (default 1000) and pace our own publishing well below it.
* The per-peer outbound RPC queue holds 32 RPCs and drops the rest; ``publish`` waits until the
  queues have room (back-pressure) instead of overrunning them.
* The subscription channel holds 32 messages and drops the rest; a dedicated task drains it into
  a large buffer at once, and a second task runs the (possibly slow) callbacks.
* Adaptive gossip stretches the heartbeat to 30-60 s when it judges the mesh unhealthy (a small
  mesh looks unhealthy); it is turned off so the heartbeat stays at ``heartbeat_interval``.
* Our own publishes are delivered to our own subscription: they are filtered out here.
* The swarm's AutoConnector dials every peer it has an address for (up to 200 connections), which
  turns N peers into a full mesh; it is kept from starting (``_disable_auto_connect``).
Gossip is best effort all the same: the agent's anti-entropy sync must repair any gap.

``allow_peer`` (a closed network, ``--allow-peers``): a connection from a peer id it refuses is
closed as soon as it is up; the Noise handshake has proven the id by then.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee, ISubscriptionAPI
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize, OutBoundQueueSize
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from .pacing import FailureWatch

logger = logging.getLogger(__name__)

RECORDS_TOPIC = "fiun/records/v1"
HELLO_TOPIC = "fiun/hello/v1"

#: GossipSub's RPC frame limit (1 MiB, as in go-libp2p-pubsub): a larger RPC is dropped by the
#: sender's queue and refused by the receiver.
MAX_RPC_BYTES: int = DefaultMaxMessageSize
#: Largest payload ``publish`` accepts.  The RPC around it also carries the topic, origin peer id,
#: seqno, signature, public key and our signed peer record (a few hundred bytes); 16 KiB of
#: headroom keeps every accepted payload deliverable.
MAX_PAYLOAD_BYTES: int = MAX_RPC_BYTES - 16 * 1024

SECURITY_PROTOCOLS: tuple[str, ...] = (str(NOISE_PROTOCOL_ID),)
MUXER_PROTOCOLS: tuple[str, ...] = (str(YAMUX_PROTOCOL_ID),)
# Newest first: multistream-select takes the first one both sides speak. Not v1.2: its IDONTWANT
# control messages pay off for large messages, and ours are small; py-libp2p sends one to every mesh
# peer for every message received, which made forwarding about 40% dearer (measured, 17 peers).
GOSSIPSUB_PROTOCOLS: tuple[TProtocol, ...] = (PROTOCOL_ID_V11, PROTOCOL_ID)

MessageHandler = Callable[[bytes, str], Awaitable[None]]


def check_size(data: bytes, overhead: int = 0) -> None:
    """Raise ``PayloadTooLarge`` unless ``data`` plus ``overhead`` bytes of framing fits one message."""
    if len(data) + overhead > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload of {len(data)} bytes exceeds the gossip limit of {MAX_PAYLOAD_BYTES - overhead} bytes "
            f"(pubsub RPCs are capped at {MAX_RPC_BYTES}); send bulk data over gRPC"
        )


class GossipError(RuntimeError):
    """A gossip operation could not be done (node not running, bad address, dial failed)."""


class PayloadTooLarge(ValueError):
    """The payload exceeds what one pubsub message may carry."""


@dataclass(frozen=True)
class GossipConfig:
    """Tunables; the defaults suit a small network of model owners."""

    #: GossipSub heartbeat in seconds (py-libp2p's default is 120 s, far too slow to heal a mesh).
    heartbeat_interval: float = 1.0
    #: Mesh degree D, D_low, D_high (the GossipSub spec's defaults).
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    #: Receive-side spam limit per forwarding peer and topic.  Every peer should use the same
    #: value: a relay forwards everybody's messages, so it must cover the whole network's rate.
    max_messages_per_topic_per_second: float = 1000.0
    #: Our own publish rate cap (messages per second per topic): a fraction of the limit above so
    #: a relay that also forwards others' messages stays under its neighbours' limits.
    publish_rate: float = 250.0
    #: ``publish`` waits while any peer's outbound queue holds this many RPCs (the queue drops
    #: beyond 32); ``publish_backpressure_timeout`` bounds the wait so one stuck peer cannot
    #: stall publishing (that peer then misses messages and anti-entropy repairs it).
    publish_queue_high_water: int = OutBoundQueueSize // 2
    publish_backpressure_timeout: float = 5.0
    #: How long a new neighbour may take to subscribe to the hello topic before we stop waiting
    #: on it (see ``wait_for_hello_listener``; the next connection waits again).
    hello_listener_timeout: float = 10.0
    #: Bootstrap dialing: exponential backoff between failed dials, and how often a connected
    #: bootstrap peer is checked (and re-dialled if the connection dropped).
    bootstrap_backoff_initial: float = 0.2
    bootstrap_backoff_max: float = 5.0
    bootstrap_check_interval: float = 2.0
    #: Messages buffered between libp2p and the callbacks (beyond this they are dropped and counted).
    inbound_buffer: int = 10_000


def _disable_auto_connect(network: Any) -> None:
    """Keep py-libp2p's AutoConnector from starting (0.8.1 has no switch for it).

    It dials every peer in the peerstore until the host holds 200 connections (go-libp2p's
    connection-manager watermarks, 100-300), re-checking every 10 s while under 50. Peers learn
    every address from the signed peer records piggybacked on pubsub RPCs, so N peers end up in a
    full mesh of N^2/2 Noise connections, and each one adds GossipSub heartbeat and control
    traffic: with 64 peers on 2 cores the handshakes alone saturated the machine. Our peers choose
    their few connections themselves (the daemon's PEER_DEGREE); its ``maybe_connect`` returns at
    once while the connector is not started."""
    connector = getattr(network, "auto_connector", None)
    if connector is None:
        return

    async def not_started() -> None:
        return None

    connector.start = not_started


def clean_peerstore(peerstore: Any) -> None:
    """One pass of py-libp2p's peerstore cleanup (expired peers and their records), made safe.

    py-libp2p 0.8.1's own ``start_cleanup_task`` raises ``PeerStoreError("peer ID is expired")`` for
    an expired peer that still holds a signed peer record (``maybe_delete_peer_record`` asks for the
    addresses of a peer it has just found expired), and the error takes the whole host down: a
    32-peer run lost a peer that way. Dropping those records first avoids the call that raises.
    """
    for peer_id, data in list(peerstore.peer_data_map.items()):
        if data.is_expired():
            peerstore.peer_record_map.pop(peer_id, None)
    peerstore._cleanup_expired_records()


async def _clean_peerstore_every(peerstore: Any, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            clean_peerstore(peerstore)
        except Exception:  # a cleanup that fails must not stop the node; the next pass retries
            logger.exception("peerstore cleanup failed")


def _new_host(key_pair: KeyPair, listen: multiaddr.Multiaddr, advertise: list[multiaddr.Multiaddr]) -> IHost:
    # Noise only (py-libp2p's default also offers TLS, secio and plaintext), yamux only.
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=[listen],
        announce_addrs=advertise or None,
    )


def _new_gossipsub(c: GossipConfig) -> GossipSub:
    return GossipSub(
        protocols=list(GOSSIPSUB_PROTOCOLS),
        degree=c.degree,
        degree_low=c.degree_low,
        degree_high=c.degree_high,
        heartbeat_initial_delay=0.1,
        heartbeat_interval=c.heartbeat_interval,  # type: ignore[arg-type]  # annotated int; a float works
        adaptive_gossip_enabled=False,
        spam_protection_enabled=True,
        max_messages_per_topic_per_second=c.max_messages_per_topic_per_second,
    )


def _peer_str(peer_id: ID) -> str:
    return peer_id.to_base58()


class _ConnNotifee(INotifee):
    """Forwards connect/disconnect events without blocking the swarm (notifees run inline)."""

    def __init__(self, node: GossipNode) -> None:
        self._node = node

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        await trio.lowlevel.checkpoint()

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_conn_event(conn, up=True)
        await trio.lowlevel.checkpoint()

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node._on_conn_event(conn, up=False)
        await trio.lowlevel.checkpoint()

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        await trio.lowlevel.checkpoint()


class GossipNode:
    """A libp2p host with GossipSub, for one peer.  Run it with ``await nursery.start(node.run)``.

    All methods must be called from the trio thread that runs ``run`` (use ``TrioBridge`` from
    other threads).
    """

    def __init__(
        self,
        key_pair: KeyPair,
        listen_addr: str = "/ip4/127.0.0.1/tcp/0",
        *,
        topic: str = RECORDS_TOPIC,
        on_message: MessageHandler | None = None,
        on_hello: MessageHandler | None = None,
        bootstrap: Sequence[str] = (),
        advertise_addrs: Sequence[str] = (),
        config: GossipConfig | None = None,
        allow_peer: Callable[[str], bool] | None = None,
    ) -> None:
        if topic == HELLO_TOPIC:
            raise ValueError(f"topic {HELLO_TOPIC!r} is reserved for hello announcements")
        self._key_pair = key_pair
        self._listen_maddr = multiaddr.Multiaddr(listen_addr)
        self._peer_id = ID.from_pubkey(key_pair.public_key)
        self.topic = topic
        self._on_message = on_message
        self._on_hello = on_hello  # raw frames of the hello topic (fiun_peer.membership reads them)
        # A closed network (``--allow-peers``): a connection from any other peer id is closed at once.
        self._allow_peer = allow_peer
        for addr in bootstrap:
            info_from_p2p_addr(multiaddr.Multiaddr(addr))  # fail fast on a malformed address
        self._bootstrap = list(bootstrap)
        # What we tell peers instead of the listen address, e.g. the container's IP when
        # listening on 0.0.0.0 (libp2p would otherwise advertise 0.0.0.0 itself).
        self._advertise = [multiaddr.Multiaddr(a) for a in advertise_addrs]
        self.config = config or GossipConfig()

        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._gossipsub: GossipSub | None = None
        self._up = False
        self._publish_lock = trio.Lock()
        self._publish_times: deque[float] = deque()
        self._hello_listener = trio.Event()  # a neighbour has subscribed to the hello topic
        # Peer connection bookkeeping: conns per peer, so a peer coming up is noticed once.
        self._conns: dict[str, set[int]] = {}
        self._event_send: trio.MemorySendChannel[tuple[str, Any]] | None = None
        self.stats: dict[str, int] = {
            "published": 0,
            "received": 0,
            "dropped_inbound": 0,
            "callback_errors": 0,
            "refused_peers": 0,
        }

    # ---- properties -----------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return _peer_str(self._peer_id)

    @property
    def is_up(self) -> bool:
        """True between ``task_status.started()`` (listening, subscribed) and shutdown."""
        return self._up

    @property
    def host(self) -> IHost | None:
        """The underlying libp2p host once ``run`` has started (for diagnostics and tests)."""
        return self._host

    @property
    def listen_addrs(self) -> list[str]:
        """Addresses peers can dial, each ending in ``/p2p/<peer id>``.

        The real listen addresses (port 0 resolved), or ``advertise_addrs`` if given.  A wildcard
        listen address (``0.0.0.0``) is reported as is: pass ``advertise_addrs`` then.
        """
        if self._host is None:
            return []
        return [str(a) for a in self._host.get_addrs()]

    def connected_peers(self) -> list[str]:
        if self._host is None:
            return []
        return [_peer_str(p) for p in self._host.get_connected_peers()]

    def mesh_peers(self, topic: str | None = None) -> list[str]:
        """Peers in our GossipSub mesh for ``topic`` (default: the records topic)."""
        if self._gossipsub is None:
            return []
        return [_peer_str(p) for p in self._gossipsub.mesh.get(topic or self.topic, set())]

    def connection_protocols(self, peer_id: str) -> list[tuple[str | None, str | None]]:
        """(security, muxer) protocol ids negotiated on each live connection to ``peer_id``."""
        if self._host is None:
            return []
        conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        return [(c.get_negotiated_security_protocol(), c.get_negotiated_muxer_protocol()) for c in conns]

    # ---- running --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start host, pubsub and gossipsub, subscribe, then run until cancelled.

        ``task_status.started()`` fires once the host listens and both topics are subscribed;
        bootstrap peers are dialled in the background (with retries), not awaited.
        """
        if self._host is not None:
            raise GossipError("GossipNode.run may be called only once")
        host = _new_host(self._key_pair, self._listen_maddr, self._advertise)
        _disable_auto_connect(host.get_network())
        gossipsub = _new_gossipsub(self.config)
        pubsub = Pubsub(host, gossipsub)
        host.get_network().register_notifee(_ConnNotifee(self))
        self._host, self._gossipsub, self._pubsub = host, gossipsub, pubsub
        event_send, event_recv = trio.open_memory_channel[tuple[str, Any]](self.config.inbound_buffer)
        self._event_send = event_send
        listening = True
        try:
            async with host.run(listen_addrs=[self._listen_maddr]), trio.open_nursery() as nursery:
                # py-libp2p only logs a failed listen (port in use, bad address) and runs on;
                # leave the host's nurseries first so the error is raised plainly, not grouped.
                listening = bool(host.get_transport_addrs())
                if listening:
                    nursery.start_soon(_clean_peerstore_every, host.get_peerstore(), 60.0)
                    await self._serve(host, pubsub, gossipsub, event_recv, task_status)
        finally:
            self._up = False
            self._event_send = None
            event_send.close()
        if not listening:
            raise GossipError(
                f"could not listen on {self._listen_maddr} (address in use? see the libp2p log)"
            )

    async def _serve(
        self,
        host: IHost,
        pubsub: Pubsub,
        gossipsub: GossipSub,
        event_recv: trio.MemoryReceiveChannel[tuple[str, Any]],
        task_status: trio.TaskStatus[None],
    ) -> None:
        async with background_trio_service(pubsub), background_trio_service(gossipsub):
            await pubsub.wait_until_ready()
            records = await pubsub.subscribe(self.topic)
            hellos = await pubsub.subscribe(HELLO_TOPIC)
            async with trio.open_nursery() as inner:
                inner.start_soon(self._drain, records, "msg")
                inner.start_soon(self._drain, hellos, "hello")
                inner.start_soon(self._dispatch, event_recv, inner)
                for addr in self._bootstrap:
                    inner.start_soon(self._keep_connected, addr)
                self._up = True
                logger.info("gossip node %s listening on %s", self.peer_id, self.listen_addrs)
                task_status.started()
                await trio.sleep_forever()

    # ---- publishing -----------------------------------------------------------------------

    def _require_up(self) -> Pubsub:
        if not self._up or self._pubsub is None:
            raise GossipError("gossip node is not running")
        return self._pubsub

    async def publish(self, data: bytes) -> None:
        """Publish ``data`` on the records topic.

        Safe for bursts: publishes are serialised, paced at ``publish_rate`` and wait for room in
        the per-peer outbound queues, so none is dropped by our own node.  Raises
        ``PayloadTooLarge`` above ``MAX_PAYLOAD_BYTES`` and ``GossipError`` if not running.
        """
        await self._publish(self.topic, data)

    async def publish_hello(self, frame: bytes) -> None:
        """Publish a hello frame on the hello topic, paced and serialised with the records."""
        await self._publish(HELLO_TOPIC, frame)

    async def wait_for_hello_listener(self) -> None:
        """Return once a neighbour of this run has subscribed to the hello topic: a hello published
        before that reaches nobody (GossipSub sends it only to subscribed peers)."""
        await self._hello_listener.wait()

    async def _publish(self, topic: str, data: bytes) -> None:
        check_size(data)
        pubsub = self._require_up()
        async with self._publish_lock:
            await self._pace()
            await self._wait_for_queue_room(pubsub)
            await pubsub.publish(topic, data)
            self.stats["published"] += 1

    async def _pace(self) -> None:
        # Sliding one-second window, the same shape as GossipSub's receive-side check.
        rate = self.config.publish_rate
        window = max(1, math.floor(rate))
        now = time.monotonic()
        while self._publish_times and self._publish_times[0] <= now - 1.0:
            self._publish_times.popleft()
        if len(self._publish_times) >= window:
            await trio.sleep(self._publish_times[0] + 1.0 - now)
        self._publish_times.append(time.monotonic())

    async def _wait_for_queue_room(self, pubsub: Pubsub) -> None:
        high = self.config.publish_queue_high_water
        with trio.move_on_after(self.config.publish_backpressure_timeout):
            while any(len(q) >= high for q in list(pubsub.peer_queues.values())):
                await trio.sleep(0.001)
        await trio.lowlevel.checkpoint()

    async def connect(self, addr: str, *, timeout: float = 10.0) -> str:
        """Dial a peer by its full multiaddr (``.../p2p/<peer id>``); returns its peer id.

        Raises ``GossipError`` on a malformed address, a failed dial or after ``timeout`` s.
        """
        if self._host is None or not self._up:
            raise GossipError("gossip node is not running")
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise GossipError(f"bad peer multiaddr {addr!r}: {exc}") from exc
        if info.peer_id == self._peer_id:
            raise GossipError("refusing to dial ourselves")
        self._unblock(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self._host.connect(info)
        except Exception as exc:  # SwarmException, OSError, TooSlowError, ...
            raise GossipError(f"could not connect to {addr}: {exc!r}") from exc
        return _peer_str(info.peer_id)

    def _unblock(self, peer_id: ID) -> None:
        # The swarm refuses to redial a peer for 60 s once all its addresses failed (a "negative
        # cache"), so a bootstrap peer that starts a moment after us would stay unreachable for a
        # minute; our own backoff decides when to retry, so lift that block before each dial.
        assert self._host is not None
        unblock = getattr(self._host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)

    # ---- background tasks -----------------------------------------------------------------

    async def _keep_connected(self, addr: str) -> None:
        """Dial a bootstrap peer until it answers, and re-dial it whenever the link drops."""
        assert self._host is not None
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        if info.peer_id == self._peer_id:
            return
        c = self.config
        delay = c.bootstrap_backoff_initial
        watch = FailureWatch(logger, f"bootstrap peer {addr}", event="bootstrap_unreachable",
                             hint="check --bootstrap (its multiaddr and /p2p/ peer id) and that peer's log")
        while True:
            if self._host.get_network().get_connections(info.peer_id):
                delay = c.bootstrap_backoff_initial
                await trio.sleep(c.bootstrap_check_interval)
                continue
            self._unblock(info.peer_id)
            try:
                with trio.fail_after(max(10.0, c.bootstrap_backoff_max)):
                    await self._host.connect(info)
                watch.succeeded()
                logger.info("connected to bootstrap peer %s", addr)
                continue
            except Exception as exc:  # not up yet, refused, timed out: retry, never crash
                watch.failed(f"{type(exc).__name__}: {exc}")
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, c.bootstrap_backoff_max)

    async def _drain(self, sub: ISubscriptionAPI, kind: str) -> None:
        # Empty libp2p's 32-slot subscription channel at once; the callbacks run elsewhere.
        me = self._peer_id.to_bytes()
        while True:
            msg: rpc_pb2.Message = await sub.get()
            if msg.from_id == me:
                continue  # our own publish, looped back by Pubsub.push_msg
            self._enqueue((kind, msg))

    def _enqueue(self, event: tuple[str, Any]) -> None:
        if self._event_send is None:
            return
        try:
            self._event_send.send_nowait(event)
        except trio.WouldBlock:
            self.stats["dropped_inbound"] += 1
            logger.warning("inbound gossip buffer full; dropped a %s event", event[0])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _on_conn_event(self, conn: INetConn, *, up: bool) -> None:
        peer_id = getattr(conn.muxed_conn, "peer_id", None)
        if peer_id is None:
            return
        key = _peer_str(peer_id)
        if up and self._allow_peer is not None and not self._allow_peer(key):
            self._enqueue(("refuse", conn))  # closed from the dispatch task: not inside the swarm's callback
            return
        conns = self._conns.setdefault(key, set())
        if up:
            first = not conns
            conns.add(id(conn))
            if first:
                self._enqueue(("peer", peer_id))
        else:
            conns.discard(id(conn))
            if not conns:
                del self._conns[key]

    async def _dispatch(
        self, events: trio.MemoryReceiveChannel[tuple[str, Any]], nursery: trio.Nursery
    ) -> None:
        async for kind, payload in events:
            try:
                if kind == "msg":
                    self.stats["received"] += 1
                    if self._on_message is not None:
                        await self._on_message(payload.data, _peer_str(ID(payload.from_id)))
                elif kind == "hello":
                    if self._on_hello is not None:
                        await self._on_hello(bytes(payload.data), _peer_str(ID(payload.from_id)))
                elif kind == "refuse":
                    self.stats["refused_peers"] += 1
                    await payload.close()
                elif kind == "peer":
                    if not self._hello_listener.is_set():
                        nursery.start_soon(self._watch_hello_subscription, payload)
            except Exception:
                # A failing callback must not take the node down; the agent logs its own errors.
                self.stats["callback_errors"] += 1
                logger.exception("gossip %s callback failed", kind)

    async def _watch_hello_subscription(self, peer_id: ID) -> None:
        # A new neighbour: once it has subscribed to the hello topic, a hello of ours reaches it
        # (and through it the network), so whoever waits to announce may go ahead.
        assert self._pubsub is not None
        try:
            await self._pubsub.wait_for_subscription(peer_id, HELLO_TOPIC,
                                                     timeout=self.config.hello_listener_timeout)
        except trio.TooSlowError:
            return
        self._hello_listener.set()
