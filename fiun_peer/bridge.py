"""Two event loops, one owner: let grpcio's threads call into the trio loop that owns peer state.

py-libp2p runs on trio and grpcio's asyncio API cannot run under trio, so the peer's state lives
in the trio loop and the gRPC server is grpcio's *threaded* server.  A handler thread must never
touch that state directly; it asks the trio loop to do the work and blocks for the answer:

    bridge = TrioBridge()                      # inside trio, e.g. at agent start-up
    ...
    def Publish(self, request, context):      # a grpcio handler, in a pool thread
        return bridge.call(agent.publish_record, request.envelope)

Because every mutation runs in the one trio thread, state needs no locks.  Heavy, blocking work
(torch) goes the other way, to a worker thread, with ``await run_in_worker(fn, ...)`` so gossip
keeps flowing meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import trio

T = TypeVar("T")

#: Default worker pool for torch work: one at a time, since torch already uses every core per op
#: and two concurrent Fisher passes would only compete for memory bandwidth and RAM.
TORCH_LIMITER = "torch"
_DEFAULT_TOKENS: dict[str, int] = {TORCH_LIMITER: 1}

# Per trio run, not per process: a CapacityLimiter must not outlive the run it was used in
# (tests call trio.run many times in one process).
_LIMITERS: trio.lowlevel.RunVar[dict[str, trio.CapacityLimiter]] = trio.lowlevel.RunVar("fiun_limiters")


class BridgeClosed(RuntimeError):
    """The trio loop behind a ``TrioBridge`` is gone (or shutting down); the call did not run."""


class TrioBridge:
    """Run functions in the trio loop from foreign threads (grpcio handlers).

    Create it inside trio: it captures the running loop's token.  ``call`` and ``call_sync``
    block the calling thread until the function has run in the trio thread, and return its result
    or raise its exception.  After the loop exits (or after ``close()``) they raise
    ``BridgeClosed`` instead of hanging.
    """

    def __init__(self) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
        except RuntimeError as exc:
            raise RuntimeError("TrioBridge must be created inside a running trio loop") from exc
        self._closed = False

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        return self._token

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse further calls (in-flight ones finish); call it when the agent shuts down."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise BridgeClosed("the trio loop is shut down (bridge closed)")

    def call(
        self,
        async_fn: Callable[..., Awaitable[T]],
        *args: object,
        timeout: float | None = None,
    ) -> T:
        """Run ``await async_fn(*args)`` in the trio loop and return its result.

        ``timeout`` (seconds) cancels the trio side and raises ``TimeoutError`` here, so a gRPC
        handler cannot hang forever on a stuck task.  Raises ``RuntimeError`` if called from the
        trio thread itself (that would deadlock: just ``await`` there).
        """
        self._check_open()

        async def runner() -> T:
            if timeout is None:
                return await async_fn(*args)
            try:
                with trio.fail_after(timeout):
                    return await async_fn(*args)
            except trio.TooSlowError as exc:
                raise TimeoutError(f"{_name(async_fn)} took longer than {timeout}s in the trio loop") from exc

        try:
            return trio.from_thread.run(runner, trio_token=self._token)
        except trio.RunFinishedError as exc:
            raise BridgeClosed("the trio loop has exited") from exc
        except trio.Cancelled as exc:
            # A call from a foreign thread runs as a trio system task; those are cancelled only
            # when the run is ending.
            raise BridgeClosed(f"the trio loop shut down while running {_name(async_fn)}") from exc

    def call_sync(self, fn: Callable[..., T], *args: object) -> T:
        """Run the plain function ``fn(*args)`` in the trio thread and return its result."""
        self._check_open()
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError as exc:
            raise BridgeClosed("the trio loop has exited") from exc


def _name(fn: object) -> str:
    return cast(str, getattr(fn, "__qualname__", repr(fn)))


def worker_limiter(name: str = TORCH_LIMITER, total_tokens: int | None = None) -> trio.CapacityLimiter:
    """The named worker-thread limiter of the current trio run, created on first use.

    ``total_tokens`` applies when the limiter is created (default: 1 for ``"torch"``, else 4) and,
    if given later, resizes it.
    """
    try:
        limiters = _LIMITERS.get()
    except LookupError:
        limiters = {}
        _LIMITERS.set(limiters)
    limiter = limiters.get(name)
    if limiter is None:
        limiter = trio.CapacityLimiter(total_tokens or _DEFAULT_TOKENS.get(name, 4))
        limiters[name] = limiter
    elif total_tokens is not None:
        limiter.total_tokens = total_tokens
    return limiter


async def run_in_worker(fn: Callable[..., T], *args: object, limiter: str = TORCH_LIMITER) -> T:
    """Run blocking ``fn(*args)`` (torch work) in a worker thread, limited by the named limiter.

    Cancelling the caller waits for ``fn`` to finish (threads cannot be killed; abandoning one
    would let it write files after we believe it stopped).
    """
    return await trio.to_thread.run_sync(fn, *args, limiter=worker_limiter(limiter))
