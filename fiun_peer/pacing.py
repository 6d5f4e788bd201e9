"""When to sync and when to push again: the daemon's two timing rules, kept apart from its wiring.

* :class:`SyncPacer`: anti-entropy rounds come every ``base`` seconds while the network changes;
  each round that finds nothing new doubles the gap, up to ``backoff`` times ``base``. A round is
  four gRPC calls per peer whatever it brings, and on an idle 64-peer network those calls burnt
  0.75 of 2 cores. Anything new (a record stored, a peer heard) brings the base gap back, so a busy
  network converges as fast as before and a quiet one still repairs a gap within ``backoff * base``.
* :func:`with_retries`: a push to a peer that waits on the record (an announcement to an heir's
  owner, a receipt to the requester) is tried again after each delay before it is left to
  anti-entropy, which at 64 peers reached a given peer only after tens of seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import trio


class SyncPacer:
    """Gap before the next anti-entropy round, from whether the last one changed anything."""

    def __init__(self, base: float, backoff: int, state: Hashable = None) -> None:
        if base <= 0 or backoff < 1:
            raise ValueError(f"sync interval must be > 0 and backoff >= 1, got {base} and {backoff}")
        self.base, self.backoff = base, backoff
        self._state, self._quiet = state, 0

    def gap(self) -> float:
        return self.base * min(2 ** self._quiet, self.backoff)

    def observe(self, state: Hashable) -> None:
        """``state``: what this peer holds now (e.g. records stored, peers known); equal to the last
        one means the round brought nothing."""
        self._quiet = self._quiet + 1 if state == self._state else 0
        self._state = state


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
