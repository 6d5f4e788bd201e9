"""The address book: the peers this peer knows, and when it last heard from or failed to reach each.

One ``AddressBook`` per daemon, created in the wiring (``fiun_peer.daemon``) and handed to the agent
(``agent.book``). It maps a peer's public key to its gRPC address, as learned from its hello
(``fiun_peer.membership``), and keeps the direct-contact times that the agent's "why pending" texts
read ("offline" only for a peer silent for a while). Runs on the trio thread, like the agent; the
metrics scrape reads only its size. See docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

#: Seconds without a direct word from a peer before "why pending" texts call it possibly offline.
QUIET_BEFORE_OFFLINE = 60.0


class AddressBook:
    """Known peers (public key hex -> gRPC address) and when each was last heard from / lost."""

    def __init__(self, own_key: str) -> None:
        self.own_key = own_key
        self.peers: dict[str, str] = {}   # public key hex -> gRPC address (learned from hellos)
        # public key hex -> when this peer last heard from it directly (a record it pushed, a sync
        # with it that answered).
        self.heard: dict[str, float] = {}
        self.lost: dict[str, float] = {}  # public key hex -> when a call to it last failed

    def learn(self, key: str, address: str) -> bool:
        """Note that the peer with public key ``key`` answers at gRPC ``address``. False (nothing
        noted) for our own key."""
        if key == self.own_key:
            return False
        self.peers[key] = address
        return True

    def addresses(self) -> list[str]:
        """Every known gRPC address, sorted, each once."""
        return sorted(set(self.peers.values()))

    def addresses_of(self, keys: Iterable[str]) -> list[str]:
        """The known gRPC addresses of the peers ``keys`` (ourselves and unknown peers left out), sorted."""
        return sorted({self.peers[k] for k in keys if k and k != self.own_key and k in self.peers})

    def heard_from(self, key: str) -> None:
        """The peer ``key`` spoke to us directly (e.g. pushed us its own record)."""
        self.heard[key] = time.time()

    def contacted(self, address: str, *, answered: bool) -> None:
        """A call to the peer at gRPC ``address`` (e.g. a sync) answered, or failed."""
        for key, addr in self.peers.items():
            if addr == address:
                (self.heard if answered else self.lost)[key] = time.time()

    def describe(self, key: str, doing: str) -> str:
        """What this peer knows of the peer ``key``, for "why pending" texts: where it is, and
        "offline" only for a peer not heard from directly for a while."""
        addr = self.peers.get(key)
        where = f"at {addr}" if addr else "address not known yet"
        now, heard, lost = time.time(), self.heard.get(key), self.lost.get(key)
        if lost is not None and (heard is None or lost > heard):
            return f"owner {key[:12]} {where}, unreachable {now - lost:.0f}s ago: offline or {doing}"
        if heard is not None and now - heard < QUIET_BEFORE_OFFLINE:
            return f"owner {key[:12]} {where}, heard from {now - heard:.0f}s ago: {doing}"
        since = f"not heard from for {now - heard:.0f}s" if heard else "not heard from since this peer started"
        return f"owner {key[:12]} {where}, {since}: offline or {doing}"
