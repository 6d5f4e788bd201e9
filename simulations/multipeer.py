"""Several peers in one process: ``python -m simulations.multipeer [options] HOME [HOME ...]``.

Only for large simulations (``fiun-sim network --peers-per-process N``): each peer is still a full
``fiun_peer.daemon.serve`` with its own identity, store, libp2p host and gRPC server, just sharing
one trio loop and one Python interpreter. Peers of one process find each other like any others: the
first one listens, the rest bootstrap to it (or all to ``--bootstrap`` when given).

Signals: every ``serve`` opens a trio signal receiver and only the most recently opened one sees a
signal, so whichever peer stops first (on SIGTERM/SIGINT, or by failing) stops the whole process;
each peer's own clean-up still runs (gRPC server stopped, ``run.json`` removed, store closed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from fiun_peer import log
from fiun_peer.daemon import serve


async def _wait_run_file(home: Path, timeout: float = 120.0) -> list[str]:
    with trio.fail_after(timeout):
        while not (home / "run.json").exists():
            await trio.sleep(0.05)
    return json.loads((home / "run.json").read_text())["p2p"]


async def serve_all(homes: list[Path], *, bootstrap: list[str], sync_interval: float,
                    first_p2p_port: int = 0) -> None:
    async with trio.open_nursery() as nursery:
        async def one(home: Path, boot: list[str], port: int = 0) -> None:
            try:
                await serve(home, bootstrap=boot, sync_interval=sync_interval,
                            p2p_listen=f"/ip4/127.0.0.1/tcp/{port}")
            finally:
                nursery.cancel_scope.cancel()  # one peer stopping (signal or error) stops the process

        nursery.start_soon(one, homes[0], bootstrap, first_p2p_port)
        rest_boot = bootstrap or await _wait_run_file(homes[0])
        for home in homes[1:]:
            nursery.start_soon(one, home, rest_boot)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulations.multipeer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("homes", nargs="+", type=Path, help="peer homes, each created by `fiun-peer init`")
    ap.add_argument("--bootstrap", nargs="*", default=[], metavar="MULTIADDR")
    ap.add_argument("--sync-interval", type=float, default=5.0)
    ap.add_argument("--log-json", action="store_true")
    ap.add_argument("--first-p2p-port", type=int, default=0, help="libp2p port of the first peer (0: any)")
    a = ap.parse_args(argv)
    log.setup(name=f"{a.homes[0].name}+{len(a.homes) - 1}", as_json=a.log_json)
    try:
        trio.run(lambda: serve_all(a.homes, bootstrap=a.bootstrap, sync_interval=a.sync_interval,
                                   first_p2p_port=a.first_p2p_port))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
