"""Delivery: our own records out to other peers (push, then gossip, with retries), and Fisher
blobs in from them. Implements the agent's network seam (``fiun_peer.seams``).

A record the agent publishes goes straight to the peers that act on it over gRPC (``Push``): one
hop, whatever the gossip mesh looks like, so a request's latency does not grow with the lineage's
depth. Gossip (after ``GOSSIP_DELAY``) reaches peers we do not know yet; anti-entropy
(``fiun_peer.anti_entropy``) repairs the rest. See docs/architecture.md.
"""

from __future__ import annotations

import functools
import logging

import trio

from .address_book import AddressBook
from .gossip import GossipNode
from .pacing import with_retries
from .rpc.channel import ChannelPool
from .rpc.fisher_service import fetch_blob
from .rpc.record_service import push_record
from .store import Store

log = logging.getLogger("fiun_peer.delivery")

#: Concurrent direct pushes of our own records (see ``publish``). On a loaded machine a push waits
#: far longer on scheduling than it works, so more in flight shortens a request's fan-out.
PUSH_PARALLEL = 16
#: Seconds before each retry of a failed push to a peer that acts on the record (see fiun_peer.pacing).
PUSH_RETRIES = (1.0, 2.0, 4.0)
#: Seconds between pushing a record and gossiping it. Gossip is the safety net for peers we do not
#: know yet; every peer pays tens of ms of CPU to forward one gossip message (py-libp2p), so on
#: shared cores gossiping at once would slow the unlearning that the push has just started.
GOSSIP_DELAY = 2.0


class Delivery:
    """Pushes and gossips our own records (a :class:`fiun_peer.seams.Publisher`). Publishing does
    nothing until ``start``; it never waits on delivery."""

    def __init__(self, store: Store, book: AddressBook, channels: ChannelPool, node: GossipNode) -> None:
        self._store, self._book, self._channels, self._node = store, book, channels, node
        self._slots = trio.CapacityLimiter(PUSH_PARALLEL)
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Deliver from now on; pushes and gossip run in ``nursery``."""
        self._nursery = nursery

    async def publish(self, envelope: bytes, push_to: list[str] | None, gossip: bool) -> None:
        """Push ``envelope`` to the gRPC addresses ``push_to`` (None: every known peer), and gossip it
        if ``gossip``, all in the background."""
        if self._nursery is None:  # not started yet: nothing to tell anyone
            return
        # A record for everyone is not retried (gossip and sync carry it); one for the few peers
        # that act on it is, since each of them waits on it.
        retries = () if push_to is None else PUSH_RETRIES
        for target in (self._book.addresses() if push_to is None else sorted(set(push_to))):
            self._nursery.start_soon(self.push_to, target, envelope, retries)
        if gossip and self._node.is_up:
            self._nursery.start_soon(self._gossip, envelope)  # the agent does not wait on it

    async def push_to(self, target: str, envelope: bytes, retries: tuple[float, ...] = ()) -> None:
        """Push one record to the peer at gRPC ``target``, retrying after each of ``retries`` seconds."""
        async def attempt() -> None:
            await trio.to_thread.run_sync(
                functools.partial(push_record, self._channels.get(target), envelope, timeout=10.0),
                limiter=self._slots)

        def failed(exc: Exception) -> None:  # gossip and anti-entropy still carry it
            self._store.incr("push_failed")
            log.debug("push failed", extra={"event": "push_failed", "target": target, "detail": str(exc)})

        await with_retries(attempt, retries, failed)

    async def _gossip(self, envelope: bytes) -> None:
        await trio.sleep(GOSSIP_DELAY)
        try:
            await self._node.publish(envelope)  # serialised and paced inside the node, so order is kept
        except Exception as exc:  # best effort; anti-entropy sync repairs any gap
            log.warning("gossip publish failed", extra={"event": "publish_failed", "detail": str(exc)})


class FisherFetcher:
    """Pulls content-addressed blobs (Fishers) from other peers over gRPC (a
    :class:`fiun_peer.seams.BlobFetcher`)."""

    def __init__(self, channels: ChannelPool) -> None:
        self._channels = channels

    def fetch(self, target: str, digest: str) -> bytes:
        return fetch_blob(self._channels.get(target), digest)
