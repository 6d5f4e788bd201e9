"""Membership: who is in the network, and how this peer comes to know and reach them.

Owns the hello (``Hello``: a peer's gRPC address, public key, name and libp2p addresses), our own
hello and how it travels, the hellos acted on, dialling, peer exchange and joining through
``--bootstrap`` peers (``fiun_peer.join``). What it learns goes into the address book
(``fiun_peer.address_book``); catching up with a newly heard peer is anti-entropy's
(``fiun_peer.anti_entropy``). See docs/architecture.md.

A hello reaches other peers three ways:

* by gossip, on the hello topic (``HelloGossip``): each peer announces itself once per run, as soon
  as a first neighbour listens, and again only if its hello changes. No periodic hellos and no
  replies: every hello reaches every peer, so re-announcing to each newcomer costs O(N^2)
  deliveries when N peers start at once, which saturated small machines from a few dozen peers on;
* with every Sync call (``SyncRequest.hello``), which is how a newcomer's neighbours learn of it
  and how it learns of everybody (the catch-up sync its hello triggers hands ours back);
* in peer lists (``RecordService.Peers``): each anti-entropy round asks one peer whom it knows.

All methods run on the trio thread.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .address_book import AddressBook
from .gossip import GossipError, GossipNode, check_size
from .identity import Identity
from .join import join_via
from .rpc.channel import ChannelPool
from .rpc.peer_auth import PeerAuth
from .rpc.record_service import identify_peer, known_hellos
from .store import Store

log = logging.getLogger("fiun_peer.membership")

#: Dial peers learned from hellos until this many are connected (GossipSub's mesh degree D=6).
PEER_DEGREE = 6
#: On the hello topic a hello travels as ``HELLO_MAGIC + boot id + hello``; the boot id (random per
#: run) tells a restarted peer from one that repeats itself.
HELLO_MAGIC = b"fiun-hello/1\n"
BOOT_ID_LEN = 8
#: At most this many libp2p addresses are taken from one hello.
MAX_P2P_ADDRS = 8


@dataclass(frozen=True)
class Hello:
    """What a peer says of itself: where its gRPC server answers, its public key (hex), its name,
    and the libp2p addresses it can be dialled at (none from older peers, or before it listens)."""

    grpc: str
    public_key: str
    name: str = ""
    p2p: tuple[str, ...] = ()

    @classmethod
    def parse(cls, blob: bytes, *, count: Callable[[str], object] | None = None) -> Hello | None:
        """The hello in ``blob`` (JSON: grpc, public_key, name, p2p), or None for a malformed one,
        counted as ``rejected_hello`` through ``count``. Claims only: nothing here is verified."""
        try:
            info = json.loads(blob)
            key, addr = str(info["public_key"]), str(info["grpc"])
            p2p = tuple(str(a) for a in info.get("p2p", []))[:MAX_P2P_ADDRS]
            name = str(info.get("name", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            if count is not None:
                count("rejected_hello")
            return None
        return cls(grpc=addr, public_key=key, name=name, p2p=p2p)

    def encode(self) -> bytes:
        """The hello as sent (``p2p`` left out while there is none, as before the host listens)."""
        info: dict[str, object] = {"grpc": self.grpc, "public_key": self.public_key, "name": self.name}
        if self.p2p:
            info["p2p"] = list(self.p2p)
        return json.dumps(info).encode()

    @property
    def peer_id(self) -> str:
        """The libp2p peer id at the end of its addresses (``.../p2p/<id>``), or ""."""
        for addr in self.p2p:
            _, sep, peer_id = addr.rpartition("/p2p/")
            if sep and peer_id and "/" not in peer_id:
                return peer_id
        return ""


def claimed_key(blob: bytes) -> str:
    """The public key a hello claims, or "" (a malformed hello is counted where it is learned)."""
    try:
        return str(json.loads(blob)["public_key"])
    except (ValueError, KeyError, TypeError):
        return ""


def learn_hello(book: AddressBook, blob: bytes, count: Callable[[str], object] | None = None) -> Hello | None:
    """Note the peer a hello names in ``book``. None for a malformed hello (counted) and for our own."""
    hello = Hello.parse(blob, count=count)
    if hello is None or not book.learn(hello.public_key, hello.grpc):
        return None
    return hello


HelloHandler = Callable[[bytes, str], Awaitable[None]]


class HelloGossip:
    """Our hello on the gossip hello topic, and the hellos heard there.

    ``received`` (the node's ``on_hello``) passes a hello on to ``on_hello(hello, origin peer id)``
    the first time a peer is heard, whenever its hello changes and when it restarted (a new boot
    id): the cue for a catch-up sync. ``run`` announces ours once a first neighbour listens, then
    again whenever ``announce`` changes."""

    def __init__(self, on_hello: HelloHandler | None = None, *, announce: bytes | None = None,
                 min_gap: float = 0.25) -> None:
        self._on_hello = on_hello
        self._boot_id = os.urandom(BOOT_ID_LEN)
        self._hellos: dict[str, bytes] = {}
        self._boots: dict[str, bytes] = {}
        self._changed = trio.Event()
        self._announce: bytes | None = None
        self.announce = announce
        self.min_gap = min_gap  # seconds between two of our hellos: a burst of changes costs one

    @property
    def announce(self) -> bytes | None:
        return self._announce

    @announce.setter
    def announce(self, blob: bytes | None) -> None:
        """Change our hello; once we have announced ourselves it goes out again at once."""
        if blob is not None:
            check_size(blob, overhead=len(HELLO_MAGIC) + BOOT_ID_LEN)
        self._announce = blob
        self._changed.set()

    async def received(self, frame: bytes, sender: str) -> None:
        head = len(HELLO_MAGIC) + BOOT_ID_LEN
        if not frame.startswith(HELLO_MAGIC) or len(frame) < head:
            return
        boot, blob = frame[len(HELLO_MAGIC):head], frame[head:]
        if self._boots.get(sender) == boot and self._hellos.get(sender) == blob:
            return  # nothing new: a repeat of one we have passed on
        self._hellos[sender], self._boots[sender] = blob, boot
        if self._on_hello is not None:
            await self._on_hello(blob, sender)

    async def run(self, node: GossipNode) -> None:
        """Announce our hello on ``node`` once a neighbour listens, then whenever it changes."""
        # Published before anyone listens, the hello would reach nobody, and there is no periodic
        # hello to make up for it.
        await node.wait_for_hello_listener()
        while True:
            self._changed = trio.Event()
            if self._announce is not None:
                try:
                    await node.publish_hello(HELLO_MAGIC + self._boot_id + self._announce)
                except Exception:
                    log.exception("hello publish failed")
            await trio.sleep(self.min_gap)
            await self._changed.wait()


class Membership:
    """Learns peers from hellos into the address book, dials a few of them, exchanges peer lists
    and joins through ``--bootstrap`` gRPC addresses. ``start`` it before the node runs."""

    def __init__(self, identity: Identity, store: Store, book: AddressBook, channels: ChannelPool, *,
                 peer_auth: PeerAuth | None = None) -> None:
        self._identity, self._store, self._book, self._channels = identity, store, book, channels
        self._peer_auth = peer_auth
        self.hellos = HelloGossip(self._gossip_hello)
        self.acted_on: dict[str, bytes] = {}  # gRPC address -> the hello last acted on
        self.dialing: set[str] = set()        # peer ids being dialled
        self._nursery: trio.Nursery | None = None
        self._node: GossipNode | None = None
        self._catch_up: Callable[[str], Awaitable[object]] | None = None

    def start(self, nursery: trio.Nursery, node: GossipNode,
              catch_up: Callable[[str], Awaitable[object]]) -> None:
        """Act on hellos from now on, in ``nursery``: dial on ``node``, and ``catch_up`` (a sync)
        with each new or restarted peer. Also starts announcing our hello on the node."""
        self._nursery, self._node, self._catch_up = nursery, node, catch_up
        nursery.start_soon(self.hellos.run, node)

    @property
    def own_hello(self) -> Hello | None:
        blob = self.hellos.announce
        return Hello.parse(blob) if blob is not None else None

    @own_hello.setter
    def own_hello(self, hello: Hello) -> None:
        self.hellos.announce = hello.encode()

    def own_blob(self) -> bytes:
        """Our hello as sent with each Sync call (empty until our gRPC address is known)."""
        return self.hellos.announce or b""

    def peer_list(self) -> list[bytes]:
        """The hellos for RecordService.Peers: our own first, then each one acted on."""
        return [self.own_blob(), *self.acted_on.values()]

    def allow_p2p(self, peer_id: str) -> bool:
        """May a libp2p connection from ``peer_id`` stay up (a closed network: ``--allow-peers``)?"""
        if self._peer_auth is None or self._peer_auth.allows_peer_id(peer_id):
            return True
        self._store.incr("p2p_refused")
        return False

    async def _gossip_hello(self, blob: bytes, sender: str) -> None:
        self.heard(blob, sender)

    def heard(self, blob: bytes, sender: str | None, *, catch_up: bool = True) -> None:
        """A peer's hello, by gossip (``sender``: its libp2p peer id; only news comes this way: a
        new peer, a changed hello, a restart), with its Sync call (``sender`` None) or from a third
        peer's list (``catch_up`` False: no sync at once; with N peers learning of N peers at a
        start that would be O(N^2) syncs, and the anti-entropy rounds get there)."""
        if self._peer_auth is not None and not self._peer_auth.allows(claimed_key(blob)):
            self._store.incr("hello_refused")  # a closed network: not one of us
            return
        hello = learn_hello(self._book, blob, self._store.incr)
        nursery, node = self._nursery, self._node
        if hello is None or nursery is None or node is None:
            return
        addr = hello.grpc
        if sender is None:
            if self.acted_on.get(addr) == blob:  # it syncs every few seconds: act on news only
                return
            sender = hello.peer_id
        self.acted_on[addr] = blob
        # Catch up with a new or restarted peer at once; our Sync call also hands it our hello,
        # which is how a newcomer learns of everybody (the gossip layer does not reply).
        if catch_up and self._catch_up is not None:
            nursery.start_soon(self._catch_up, addr)
        if len(self.acted_on) == 1:  # the first peer we hear of: ask it whom it knows
            nursery.start_soon(self.exchange_peers, addr)
        # Without this every peer hangs off its bootstrap peer alone (a star): GossipSub prunes the
        # hub's mesh, and most records then travel only by the slower anti-entropy sync.
        connected = set(node.connected_peers())
        wanted = len(connected) + len(self.dialing) < PEER_DEGREE
        # Only the smaller peer id dials: two peers dialling each other at once end up with two
        # connections, and when one closes py-libp2p's pubsub drops the peer for good.
        if hello.p2p and sender and wanted and self._identity.peer_id < sender and sender not in connected \
                and sender not in self.dialing:
            nursery.start_soon(self.dial, sender, list(hello.p2p))

    async def dial(self, peer_id: str, addrs: list[str]) -> None:
        """Connect to ``peer_id`` at the first of ``addrs`` that answers."""
        assert self._node is not None
        self.dialing.add(peer_id)
        try:
            for addr in addrs:
                try:
                    await self._node.connect(addr)
                    return
                except GossipError as exc:
                    log.debug("dial failed", extra={"event": "dial_failed", "target": addr, "detail": str(exc)})
        finally:
            self.dialing.discard(peer_id)

    async def exchange_peers(self, target: str) -> None:
        """Ask the peer at gRPC ``target`` whom it knows, and learn of them (no catch-up syncs)."""
        # Hellos travel by gossip once per start; one missed (a lost message, a peer that started
        # later) would leave two peers unaware of each other. Asking one random peer per round
        # whom it knows spreads every address in a few rounds.
        try:
            hellos = await trio.to_thread.run_sync(functools.partial(known_hellos, self._channels.get(target)))
        except Exception as exc:  # the peer may be gone, or older: the next round asks another
            log.debug("peer exchange failed", extra={"event": "peers_failed", "target": target, "detail": str(exc)})
            return
        for blob in hellos:
            self.heard(blob, None, catch_up=False)

    def join(self, targets: list[str]) -> None:
        """Keep a libp2p connection to each ``--bootstrap`` peer given by its gRPC address."""
        assert self._nursery is not None and self._node is not None
        node, channels = self._node, self._channels
        for target in targets:
            self._nursery.start_soon(functools.partial(
                join_via, target, own_peer_id=self._identity.peer_id, connected=node.connected_peers,
                connect=node.connect, identify=lambda t: identify_peer(channels.get(t))))
