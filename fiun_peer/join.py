"""Join the network through a peer known only by its gRPC address (``--bootstrap HOST:PORT``).

A libp2p dial needs the remote peer id, which a container or a Kubernetes pod cannot know before the
bootstrap peer has created its key. So a bootstrap entry that is not a multiaddr is a gRPC address:
we ask that peer's ``RecordService.Identify`` for its peer id and libp2p addresses, dial them, and do
it again whenever the link drops (the peer may have restarted elsewhere). Nothing is trusted beyond
that: the Noise handshake checks the peer id, and every record is verified on its own.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable

import multiaddr
import trio

from .rpc.record_service import identify_peer

log = logging.getLogger("fiun_peer.join")

_WILDCARDS = {"0.0.0.0", "::"}


def split_bootstrap(entries: list[str]) -> tuple[list[str], list[str]]:
    """(libp2p multiaddrs, gRPC ``host:port`` targets) of a ``--bootstrap`` list."""
    maddrs = [e for e in entries if e.startswith("/")]
    targets = [e for e in entries if not e.startswith("/")]
    for t in targets:
        host, sep, port = t.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap entry {t!r} is neither a multiaddr (/ip4/.../p2p/ID) nor HOST:PORT")
    return maddrs, targets


def _resolve(host: str) -> str:
    """An IPv4 address for ``host`` from the system resolver (hosts file and search domains included,
    unlike libp2p's own DNS client)."""
    return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]


def dialable(addrs: list[str], via_host: str) -> list[str]:
    """Addresses we can dial: a wildcard listen address (a peer bound to 0.0.0.0 that advertises
    nothing else) becomes the host we reached it at by gRPC, and DNS names become IPv4 addresses."""
    out = []
    for text in addrs:
        segs = text.split("/")  # "/ip4/1.2.3.4/tcp/4001/p2p/12D3..." -> ["", "ip4", "1.2.3.4", ...]
        if len(segs) < 5 or segs[0] or "p2p" not in segs:
            continue
        proto, host = segs[1], segs[2]
        try:
            if proto == "ip4" and host in _WILDCARDS:
                segs[2] = _resolve(via_host)
            elif proto in ("dns", "dns4"):
                segs[1], segs[2] = "ip4", _resolve(host)
        except OSError:
            continue
        try:
            out.append(str(multiaddr.Multiaddr("/".join(segs))))
        except Exception:  # a malformed address from the peer: skip it
            continue
    return out


async def join_via(target: str, *, own_peer_id: str, connected: Callable[[], list[str]],
                   connect: Callable[[str], object], identify: Callable[[str], object] = identify_peer,
                   check_interval: float = 5.0, backoff_max: float = 10.0) -> None:
    """Keep a libp2p connection to the peer at gRPC ``target``; returns only if it is ourselves.

    ``connected()`` lists connected peer ids; ``await connect(multiaddr)`` dials one (raises on failure).
    """
    delay = 0.5
    via_host = target.rpartition(":")[0].strip("[]")
    while True:
        try:
            info = await trio.to_thread.run_sync(identify, target)
        except Exception as exc:  # not up yet, not resolvable yet (Kubernetes DNS), refused
            log.debug("bootstrap identify failed", extra={"event": "bootstrap_wait", "target": target,
                                                          "detail": str(exc)[:200]})
        else:
            if info.peer_id == own_peer_id:
                log.info("bootstrap target is this peer", extra={"event": "bootstrap_self", "target": target})
                return
            addrs = await trio.to_thread.run_sync(dialable, list(info.p2p_addresses), via_host)
            for addr in addrs:
                try:
                    await connect(addr)
                except Exception as exc:
                    log.debug("bootstrap dial failed", extra={"event": "bootstrap_dial_failed", "addr": addr,
                                                              "detail": str(exc)[:200]})
                    continue
                log.info("joined through bootstrap peer", extra={"event": "bootstrap_joined", "target": target,
                                                                 "remote": info.peer_id, "addr": addr})
                delay = 0.5
                while info.peer_id in connected():
                    await trio.sleep(check_interval)
                break
        await trio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, backoff_max)
