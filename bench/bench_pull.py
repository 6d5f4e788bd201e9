"""Micro-benchmark: pulling a Fisher blob over gRPC on loopback, against a raw TCP socket copy.

    .venv/bin/python bench/bench_pull.py --seed 0 --json results/bench_pull.json

``grpc``: a real gRPC server (``fiun_peer.rpc.server.make_server``) with the real ``FisherServicer``
over a real ``Store``, and the client every peer uses, ``fisher_service.fetch_blob``: a new channel
per pull, 1 MiB chunks, reassembly and the sha256 check. ``socket``: the same bytes sent with
``sendall`` over a fresh loopback TCP connection and received into a buffer: the transport floor.
``socket_sha256``: the socket copy plus the same sha256 the gRPC client does, to show what hashing
alone costs. Contenders alternate round by round; MiB/s are medians, ratios medians of per-round
ratios. Wall clock (the work happens in several threads).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import socket
import sys
import tempfile
import threading
from pathlib import Path

from bench import int_list
from bench.bench_timing import interleaved, median, paired_ratio, summary, write_cases
from fiun_peer.identity import Identity
from fiun_peer.records import build_announcement
from fiun_peer.rpc.fisher_service import FisherServicer, fetch_blob
from fiun_peer.rpc.server import make_server
from fiun_peer.store import Store

MB = 1 << 20
COMMAND = ".venv/bin/python bench/bench_pull.py --seed {seed} --json results/bench_pull.json"


class RawSender:
    """A loopback TCP server that writes ``data`` to every connection and closes it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(self.data)

    def pull(self) -> bytes:
        buf = bytearray(len(self.data))
        view = memoryview(buf)
        got = 0
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            while got < len(buf):
                n = s.recv_into(view[got:], len(buf) - got)
                if n == 0:
                    raise ConnectionError(f"socket closed after {got} of {len(buf)} bytes")
                got += n
        return bytes(buf)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(timeout=5)


def bench_size(size: int, *, seed: int, rounds: int, home: Path) -> dict:
    """One blob size: returns times, MB/s per contender, the gRPC/socket ratios and a bytes check."""
    data = random.Random(seed + size).randbytes(size)
    store = Store(home / f"store-{size}")
    server, port = make_server("127.0.0.1:0", FisherServicer(store))
    server.start()
    raw = RawSender(data)
    try:
        # Peers are served Fishers that an announcement names, so the blob is stored as one.
        digest = store.put_blob(data, kind="fisher")
        store.add_record(build_announcement(Identity.from_seed(bytes(32), "bench"), request_id="bench", model_id="m",
                                            model_digest="0" * 64, fisher_digest=digest, shapes={"weight": [1]},
                                            estimator="empirical", labels=[0]))
        target = f"127.0.0.1:{port}"
        got_grpc, got_raw = fetch_blob(target, digest), raw.pull()
        equal = got_grpc == data and got_raw == data
        t = interleaved({
            "grpc": lambda: fetch_blob(target, digest),
            "socket": raw.pull,
            "socket_sha256": lambda: hashlib.sha256(raw.pull()).hexdigest(),
        }, rounds=rounds, clock="wall")
    finally:
        raw.close()
        server.stop(grace=None)
        store.close()
    mbps = {k: size / MB / median(v) for k, v in t.items()}
    return {"bytes": size, "mib": size / MB, "bytes_equal": equal, "times": {k: summary(v) for k, v in t.items()},
            "mib_per_s": mbps,
            "ratios": {"grpc_over_socket_time": paired_ratio(t["grpc"], t["socket"]),
                       "grpc_over_socket_sha256_time": paired_ratio(t["grpc"], t["socket_sha256"]),
                       "grpc_throughput_fraction_of_socket": paired_ratio(t["socket"], t["grpc"])}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random blob bytes")
    ap.add_argument("--sizes-mb", default="1,8,64", type=int_list, help="comma-separated blob sizes in MiB")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="1 MiB and 8 MiB, 3 rounds")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    a = ap.parse_args(argv)
    sizes = [1, 8] if a.quick else list(a.sizes_mb)
    rounds = 3 if a.quick else a.rounds
    cases = []
    print(f"{'MiB':>4s} | {'gRPC MiB/s':>10s} {'socket MiB/s':>12s} {'sock+sha MiB/s':>14s} | "
          f"{'gRPC/socket time':>16s} {'bytes equal':>11s}")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        for mb in sizes:
            c = bench_size(mb * MB, seed=a.seed, rounds=rounds, home=Path(tmp))
            m = c["mib_per_s"]
            print(f"{mb:4d} | {m['grpc']:10.0f} {m['socket']:12.0f} {m['socket_sha256']:14.0f} | "
                  f"{c['ratios']['grpc_over_socket_time']:15.1f}× {c['bytes_equal']!s:>11s}", flush=True)
            cases.append(c)
    if a.json:
        write_cases(a.json, "pull", a, rounds=rounds, command=COMMAND.format(seed=a.seed), cases=cases)
        print(f"wrote {a.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
