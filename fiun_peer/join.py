"""Join the network through a peer known only by its gRPC address (``--bootstrap HOST:PORT``).

A libp2p dial needs the remote peer id, which a container or a Kubernetes pod cannot know before the
bootstrap peer has created its key. So a bootstrap entry that is not a multiaddr is a gRPC address:
we ask that peer's ``RecordService.Identify`` for its peer id and libp2p addresses, dial them, and do
it again whenever the link drops (the peer may have restarted elsewhere). Nothing is trusted beyond
that: the Noise handshake checks the peer id, and every record is verified on its own.

Part of membership: ``fiun_peer.membership.Membership.join`` runs one ``join_via`` per such entry.
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr

from .pacing import FailureWatch
from .rpc.record_service import identify_peer

log = logging.getLogger("fiun_peer.join")

_WILDCARDS = {"0.0.0.0", "::"}


def split_bootstrap(entries: list[str]) -> tuple[list[str], list[str]]:
    """(libp2p multiaddrs, gRPC ``host:port`` targets) of a ``--bootstrap`` list."""
    maddrs = [e for e in entries if e.startswith("/")]
    targets = [e for e in entries if not e.startswith("/")]
    for m in maddrs:
        check_bootstrap_multiaddr(m)
    for t in targets:
        host, sep, port = t.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap entry {t!r} is neither a multiaddr (/ip4/.../p2p/ID) nor HOST:PORT")
    return maddrs, targets


def check_bootstrap_multiaddr(text: str) -> None:
    """A ValueError in the operator's terms unless ``text`` is a multiaddr ending in /p2p/<peer id>
    (libp2p's own words for a missing one: "The last protocol should be `P_P2P` (421) instead of `6`")."""
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        raise ValueError(f"bootstrap entry {text!r} is not a valid multiaddr ({exc}); give a peer's gRPC "
                         "HOST:PORT, or /ip4/HOST/tcp/PORT/p2p/<peer id>") from None
    protocols = [p.name for p in addr.protocols()]
    if not protocols or protocols[-1] != "p2p":
        raise ValueError(f"bootstrap multiaddr {text!r} does not say which peer to expect: end it with "
                         "/p2p/<peer id> (`fiun-peer admin status` on that peer prints it), or give the "
                         "peer's gRPC HOST:PORT instead and its peer id is asked for")
    try:
        info_from_p2p_addr(addr)
    except Exception as exc:
        raise ValueError(f"bootstrap multiaddr {text!r}: its peer id is not valid ({exc})") from None


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
    watch = FailureWatch(log, f"bootstrap peer {target}", event="bootstrap_unreachable",
                         hint="check --bootstrap (a running peer's gRPC HOST:PORT) and that peer's log")
    while True:
        try:
            info = await trio.to_thread.run_sync(identify, target)
        except Exception as exc:  # not up yet, not resolvable yet (Kubernetes DNS), refused
            watch.failed(f"{type(exc).__name__}: {getattr(exc, 'details', lambda: '')() or exc}")
        else:
            if info.peer_id == own_peer_id:
                log.info("bootstrap target is this peer", extra={"event": "bootstrap_self", "target": target})
                return
            addrs = await trio.to_thread.run_sync(dialable, list(info.p2p_addresses), via_host)
            errors = [] if addrs else [f"it advertises no libp2p address we can dial: {list(info.p2p_addresses)[:4]}"]
            for addr in addrs:
                try:
                    await connect(addr)
                except Exception as exc:
                    errors.append(f"{addr}: {exc}")
                    continue
                watch.succeeded()
                log.info("joined through bootstrap peer", extra={"event": "bootstrap_joined", "target": target,
                                                                 "remote": info.peer_id, "addr": addr})
                delay = 0.5
                while info.peer_id in connected():
                    await trio.sleep(check_interval)
                break
            else:
                watch.failed(f"answered on gRPC but its libp2p side did not: {'; '.join(errors)[:300]}")
        await trio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, backoff_max)
