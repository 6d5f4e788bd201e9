"""When to sync and when to push again: the timing rules of anti-entropy (``fiun_peer.anti_entropy``)
and delivery (``fiun_peer.delivery``), and when a retried dial starts to warn.

* :class:`SyncPacer`: anti-entropy rounds come every ``base`` seconds while they find records
  the pushes missed; each round that finds nothing doubles the gap, up to ``backoff`` times
  ``base``. A round is four gRPC calls per peer whatever it brings: an idle 64-peer network burnt
  0.74-0.88 of 2 cores without the backoff and 0.40-0.46 with it (``bench/idle_cpu.py --peers 64``,
  once settled). Records that arrive by push do not speed the rounds up: a
  request's pushes already reach the peers that act on it, and rounds at the base rate racing them
  (64 peers each pulling every new record at once) slowed the request at 64 peers on 2 cores from
  13 s to 112 s (``bench/exp_scale.py``; RESULTS.md, the Scale reading). A quiet network still repairs a gap within ``backoff * base``.
* :class:`FailureWatch`: a retried action (dialling a bootstrap peer) stays quiet while it fails now
  and then, and warns once failures persist, naming what it tries to reach: a wrong ``--bootstrap``
  address used to give 25 s of silence with the retries at debug level.
* :func:`with_retries`: a push to a peer that waits on the record (an announcement to an heir's
  owner, a receipt to the requester) is tried again after each delay before it is left to
  anti-entropy, which at 64 peers reached a given peer only after tens of seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio


class SyncPacer:
    """Seconds until the next anti-entropy round. Anti-entropy repairs what pushes missed, so the
    pace follows what the rounds themselves find: a round that stored records keeps the base gap,
    one that found nothing doubles it, up to ``backoff`` times ``base``."""

    def __init__(self, base: float, backoff: int) -> None:
        if base <= 0 or backoff < 1:
            raise ValueError(f"sync interval must be > 0 and backoff >= 1, got {base} and {backoff}")
        self.base, self.backoff = base, backoff
        self._quiet = 0

    def gap(self) -> float:
        return self.base * min(2 ** self._quiet, self.backoff)

    def round_done(self, stored: int) -> None:
        """A round ended having stored ``stored`` records that this peer lacked."""
        self._quiet = 0 if stored else self._quiet + 1


async def with_retries(attempt: Callable[[], Awaitable[None]], delays: tuple[float, ...],
                       on_error: Callable[[Exception], None]) -> bool:
    """Await ``attempt()`` until it returns, at most ``len(delays) + 1`` times, sleeping
    ``delays[i]`` after the i-th failure; each failure goes to ``on_error``. True if one succeeded."""
    for i in range(len(delays) + 1):
        try:
            await attempt()
            return True
        except Exception as exc:
            on_error(exc)
        if i < len(delays):
            await trio.sleep(delays[i])
    return False


class FailureWatch:
    """Consecutive failures of one retried action. The ``warn_after``-th failure in a row logs a
    warning naming ``what`` and the last error, and so does at most one failure per ``every``
    seconds after it; a success after a warning logs that it recovered."""

    def __init__(self, log: logging.Logger, what: str, *, event: str, hint: str = "", warn_after: int = 3,
                 every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self.what, self.event, self.hint = log, what, event, hint
        self.warn_after, self.every, self._clock = warn_after, every, clock
        self.failures = 0
        self._warned_at: float | None = None

    def failed(self, detail: str) -> bool:
        """Count one failure; True when it was reported as a warning."""
        self.failures += 1
        now = self._clock()
        due = self.failures >= self.warn_after and (self._warned_at is None or now - self._warned_at >= self.every)
        if due:
            self._warned_at = now
            self._log.warning(f"{self.what} unreachable after {self.failures} attempts, still retrying: "
                              f"{detail[:300]}{'; ' + self.hint if self.hint else ''}",
                              extra={"event": self.event, "attempts": self.failures})
        else:
            self._log.debug(f"{self.what} attempt failed", extra={"event": self.event, "detail": detail[:200]})
        return due

    def succeeded(self) -> None:
        if self._warned_at is not None:
            self._log.info(f"{self.what} reached after {self.failures} failed attempts",
                              extra={"event": f"{self.event}_recovered"})
        self.failures, self._warned_at = 0, None
