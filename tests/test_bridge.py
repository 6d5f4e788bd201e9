"""TrioBridge with a real grpcio threaded server: handlers in pool threads call into trio."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import trio

from fiun_peer.bridge import BridgeClosed, TrioBridge, run_in_worker, worker_limiter

SERVICE = "fiun.test.Counter"


class Counter:
    """State owned by the trio loop; only ever touched from the trio thread."""

    def __init__(self) -> None:
        self.value = 0
        self.trio_thread = threading.get_ident()
        self.foreign_touch = False

    async def incr(self, amount: int) -> int:
        if threading.get_ident() != self.trio_thread:
            self.foreign_touch = True
        self.value += amount
        new = self.value
        await trio.sleep(0)  # a checkpoint: lets concurrent calls interleave in the loop
        return new

    def get(self) -> int:
        if threading.get_ident() != self.trio_thread:
            self.foreign_touch = True
        return self.value


def start_server(bridge: TrioBridge, counter: Counter) -> tuple[grpc.Server, ThreadPoolExecutor, int]:
    def incr(request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            return str(bridge.call(counter.incr, int(request), timeout=10.0)).encode()
        except BridgeClosed as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        return str(bridge.call_sync(counter.get)).encode()

    # No serializers: handlers see and return raw bytes (the project's stubs are not needed).
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Incr": grpc.unary_unary_rpc_method_handler(incr),
            "Get": grpc.unary_unary_rpc_method_handler(get),
        },
    )
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc-test")
    server = grpc.server(executor)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, executor, port


def run_clients(port: int, n_threads: int, per_thread: int) -> tuple[list[int], int]:
    """Blocking: hammer the server from several client threads; return every reply."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        incr = channel.unary_unary(f"/{SERVICE}/Incr")
        get = channel.unary_unary(f"/{SERVICE}/Get")

        def worker(_: int) -> list[int]:
            return [int(incr(b"1", timeout=10)) for _ in range(per_thread)]

        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            replies = [r for chunk in pool.map(worker, range(n_threads)) for r in chunk]
        return replies, int(get(b"", timeout=10))


def test_grpc_threads_call_into_trio_exactly_once() -> None:
    n_threads, per_thread = 8, 50
    total = n_threads * per_thread
    result: dict[str, object] = {}

    async def main() -> None:
        counter = Counter()
        bridge = TrioBridge()
        server, executor, port = start_server(bridge, counter)
        try:
            # The clients block, so they run in a worker thread; the trio loop stays free to
            # serve the bridge calls meanwhile.
            replies, final = await trio.to_thread.run_sync(run_clients, port, n_threads, per_thread)
        finally:
            server.stop(grace=None).wait()
            executor.shutdown(wait=True)  # grpc does not own its executor's threads
        result.update(replies=replies, final=final, value=counter.value, foreign=counter.foreign_touch)
        result["bridge"] = bridge

    trio.run(main)
    replies = result["replies"]
    assert isinstance(replies, list)
    # Every increment applied exactly once, and each saw a distinct, consistent value.
    assert sorted(replies) == list(range(1, total + 1))
    assert result["final"] == result["value"] == total
    assert result["foreign"] is False  # the state was only touched in the trio thread

    # Once the loop is gone, calls fail clearly instead of hanging.
    bridge = result["bridge"]
    assert isinstance(bridge, TrioBridge)
    with pytest.raises(BridgeClosed):
        bridge.call(Counter().incr, 1)
    with pytest.raises(BridgeClosed):
        bridge.call_sync(int, "1")


def test_bridge_errors_timeouts_and_close() -> None:
    async def boom() -> None:
        raise ValueError("bad input")

    async def slow() -> None:
        await trio.sleep(30)

    async def main() -> None:
        bridge = TrioBridge()
        # From the trio thread itself the blocking call must refuse (it would deadlock).
        with pytest.raises(RuntimeError, match="from a thread"):
            bridge.call(trio.sleep, 0)

        def from_thread() -> dict[str, object]:
            out: dict[str, object] = {}
            try:
                bridge.call(boom)
            except ValueError as exc:  # the trio-side exception reaches the caller as itself
                out["error"] = str(exc)
            try:
                bridge.call(slow, timeout=0.2)
            except TimeoutError as exc:
                out["timeout"] = str(exc)
            out["sum"] = bridge.call_sync(sum, [1, 2, 3])
            bridge.close()
            try:
                bridge.call_sync(int, "1")
            except BridgeClosed:
                out["closed"] = True
            return out

        out = await trio.to_thread.run_sync(from_thread)
        assert out["error"] == "bad input"
        assert "took longer than 0.2s" in str(out["timeout"])
        assert out["sum"] == 6 and out["closed"] is True

    trio.run(main)

    with pytest.raises(RuntimeError, match="inside a running trio loop"):
        TrioBridge()


def test_run_in_worker_keeps_the_loop_responsive() -> None:
    async def main() -> None:
        release = threading.Event()
        ticks = 0

        def blocking(x: int) -> int:
            assert release.wait(timeout=10)  # stands in for a torch computation
            return x * 2

        async def ticker() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            results: list[int] = []

            async def work() -> None:
                results.append(await run_in_worker(blocking, 21))

            nursery.start_soon(work)
            await trio.sleep(0.2)
            assert ticks >= 5  # the trio loop kept running while the worker blocked
            release.set()
        assert results == [42]
        assert worker_limiter().total_tokens == 1
        assert worker_limiter("io", 3).total_tokens == 3
        assert worker_limiter("io") is worker_limiter("io")

    trio.run(main)
