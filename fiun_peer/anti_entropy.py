"""Anti-entropy: sync rounds with a few random peers, their pacing, and catch-ups on demand.

Gossip and pushes are best effort; a Sync call (``RecordService.Sync``) hands over every record the
caller lacks, so periodic rounds repair any gap. Owns the rounds (``run``: ``SYNC_FANOUT`` random
known peers, paced by ``fiun_peer.pacing.SyncPacer``), the peers being synced (``syncing``), and the
catch-ups: a sync at once with a newly heard peer (``sync_with``, started by membership) or with the
owners a watched request waits on (``catch_up_soon``, from GetRequest). Each round also asks one
of its peers whom it knows (membership's peer exchange). See docs/architecture.md.

All methods run on the trio thread; the gRPC calls run in worker threads.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from .address_book import AddressBook
from .pacing import SyncPacer
from .rpc.channel import ChannelPool
from .rpc.record_service import sync_records
from .store import Store

log = logging.getLogger("fiun_peer.anti_entropy")

#: Peers asked per anti-entropy round (chosen at random, so every pair meets within a few rounds).
SYNC_FANOUT = 3
#: Syncs in flight at once from one peer (catch-ups with newly heard peers come in bursts).
SYNC_PARALLEL = 4
#: Quiet anti-entropy rounds stretch the interval up to this many times ``sync_interval`` (see
#: fiun_peer.pacing.SyncPacer).
SYNC_BACKOFF = 4
#: Seconds between catch-up syncs with one peer while someone watches a request that waits on it:
#: its receipt reaches the watcher within about this long (pushes go to the requester only).
CATCH_UP_GAP = 1.0


class Ingest(Protocol):
    """Where synced records go (the agent)."""

    def ingest_many(self, envelopes: list[bytes], *, source: str) -> int: ...


class AntiEntropy:
    """Sync rounds and catch-ups of one peer. ``start`` it, then run ``run`` for the rounds."""

    def __init__(self, store: Store, ledger: Ingest, book: AddressBook, channels: ChannelPool,
                 sync_interval: float, *, hello: Callable[[], bytes],
                 exchange: Callable[[str], Awaitable[None]]) -> None:
        """``hello()``: our hello, sent with each Sync call; ``exchange(target)``: ask a peer whom
        it knows (membership's peer exchange), once per round."""
        self._store, self._ledger, self._book, self._channels = store, ledger, book, channels
        self._hello, self._exchange = hello, exchange
        self.pacer = SyncPacer(sync_interval, SYNC_BACKOFF)
        self.syncing: set[str] = set()        # gRPC addresses a Sync call is still running with
        self._caught_up: dict[str, float] = {}  # gRPC address -> when catch_up_soon last synced it
        self._slots = trio.CapacityLimiter(SYNC_PARALLEL)
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Take catch-ups from now on; they run in ``nursery``."""
        self._nursery = nursery

    async def sync_with(self, target: str) -> int:
        """One Sync call, unless one with ``target`` is still running (a round's, a catch-up's: an
        unreachable peer's calls hang until they time out, and must not pile up on the call slots);
        returns how many records it stored."""
        if target in self.syncing:
            return 0
        self.syncing.add(target)
        try:
            return await self._call(target)
        finally:
            self.syncing.discard(target)

    async def _call(self, target: str) -> int:
        try:
            envelopes = await trio.to_thread.run_sync(functools.partial(
                sync_records, self._channels.get(target), self._store.record_ids(), hello=self._hello()),
                limiter=self._slots)
        except Exception as exc:  # the peer may be gone; the next round retries
            log.debug("sync failed", extra={"event": "sync_failed", "target": target, "detail": str(exc)})
            self._book.contacted(target, answered=False)
            return 0
        self._book.contacted(target, answered=True)
        return self._ledger.ingest_many(envelopes, source=f"sync:{target}")

    def catch_up_soon(self, targets: list[str]) -> None:
        """A watched request waits on these peers: sync with each now, at most once per
        CATCH_UP_GAP seconds each (a watcher polls GetRequest twice a second)."""
        now = time.monotonic()
        for target in targets:
            if self._nursery is not None and now - self._caught_up.get(target, -CATCH_UP_GAP) >= CATCH_UP_GAP:
                self._caught_up[target] = now
                self._nursery.start_soon(self.sync_with, target)

    async def _round(self, targets: list[str]) -> None:
        # One after another: each call names what the previous ones brought, so a burst of new
        # records (a request makes three per affected model) comes once per round, not once per
        # target. Three at once sent every peer the same records three times, and at 64 peers on
        # 2 cores that redundant traffic kept the machine saturated for minutes.
        stored = 0
        for target in targets:
            stored += await self.sync_with(target)
        self.pacer.round_done(stored)

    async def run(self) -> None:
        """Rounds until cancelled, every ``pacer.gap()`` seconds."""
        assert self._nursery is not None, "start() first"
        while True:
            await trio.sleep(self.pacer.gap())
            # Each round in its own task: in a partition, calls to the far side hang until they fail,
            # and must not hold up the next rounds, which keep this side converging.
            # A few random peers per round, not all: all-pairs sync is O(N^2) work per interval.
            targets = self._book.addresses()
            chosen = random.sample(targets, min(SYNC_FANOUT, len(targets)))
            if chosen:
                self._nursery.start_soon(self._round, chosen)
                self._nursery.start_soon(self._exchange, chosen[0])
