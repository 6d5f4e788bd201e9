"""When to sync and when to push again: the daemon's two timing rules, kept apart from its wiring.

* :class:`SyncPacer`: anti-entropy rounds come every ``base`` seconds while the network changes;
  each round that finds nothing new doubles the gap, up to ``backoff`` times ``base``. A round is
  four gRPC calls per peer whatever it brings, and on an idle 64-peer network those calls burnt
  0.75 of 2 cores. Anything new (a record stored, a peer heard) starts a round at the next base
  tick and brings the base gap back, so a busy network converges as fast as before and a quiet one
  still repairs a gap within ``backoff * base``.
* :func:`with_retries`: a push to a peer that waits on the record (an announcement to an heir's
  owner, a receipt to the requester) is tried again after each delay before it is left to
  anti-entropy, which at 64 peers reached a given peer only after tens of seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import trio


class SyncPacer:
    """Whether an anti-entropy round is due, asked once every ``base`` seconds with what this peer
    holds now (e.g. records stored, peers known). A round is due at once when that changed since the
    last ask (news spreads at the base rate, even in the middle of a long quiet gap), else once the
    gap is over: it doubles with every quiet round, up to ``backoff`` times ``base``."""

    def __init__(self, base: float, backoff: int, state: Hashable = None) -> None:
        if base <= 0 or backoff < 1:
            raise ValueError(f"sync interval must be > 0 and backoff >= 1, got {base} and {backoff}")
        self.base, self.backoff = base, backoff
        self._state, self._quiet, self._ticks = state, 0, 0

    def gap(self) -> float:
        """Seconds from the last round to the next one, if nothing new comes in meanwhile."""
        return self.base * min(2 ** self._quiet, self.backoff)

    def due(self, state: Hashable) -> bool:
        self._ticks += 1
        if state != self._state:
            self._state, self._quiet, self._ticks = state, 0, 0
            return True
        if self._ticks * self.base >= self.gap():
            self._quiet, self._ticks = self._quiet + 1, 0
            return True
        return False


async def with_retries(attempt: Callable[[], Awaitable[None]], delays: tuple[float, ...],
                       on_error: Callable[[Exception], None]) -> bool:
    """Await ``attempt()`` until it returns, at most ``len(delays) + 1`` times, sleeping
    ``delays[i]`` after the i-th failure; each failure goes to ``on_error``. True if one succeeded."""
    for wait in (*delays, None):
        try:
            await attempt()
            return True
        except Exception as exc:
            on_error(exc)
        if wait is None:
            return False
        await trio.sleep(wait)
    return False
