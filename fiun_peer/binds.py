"""The addresses `fiun-peer run` is told to listen on, checked in the operator's terms before the
servers start: grpc-core and py-libp2p report a port in use with their own internals (a raw
grpc-core log line; a libp2p log entry and an exception group), long after the flags were read."""

from __future__ import annotations

import errno
import ipaddress
import socket


class BindError(OSError):
    """An address the daemon cannot listen on; the message names the flag and says what to do."""


def host_port(bind: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as (host, port); a BindError naming ``flag`` otherwise."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise BindError(f"{flag} wants HOST:PORT, got {bind!r} (e.g. 127.0.0.1:50051; port 0 picks a free one)")
    return host.strip("[]") or "0.0.0.0", int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a literal address or "localhost") only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def p2p_host_port(maddr: str) -> tuple[str, int] | None:
    """(host, port) of a ``/ip4|ip6/HOST/tcp/PORT`` listen multiaddr; None for anything else (libp2p
    itself then says what it makes of it)."""
    segs = maddr.split("/")
    if len(segs) >= 5 and segs[0] == "" and segs[1] in ("ip4", "ip6") and segs[3] == "tcp" and segs[4].isdigit():
        return segs[2], int(segs[4])
    return None


def check_free(host: str, port: int, flag: str) -> None:
    """Raise BindError when nobody could listen on (host, port) now: another process listens there, or
    the host is not an address of this machine. Port 0 (the OS picks) always passes. SO_REUSEADDR as
    the servers set it, so a port in TIME_WAIT from our own last run is not taken for one in use."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            raise BindError(f"{flag} {host}:{port}: cannot resolve {host!r} ({exc.strerror})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BindError(f"{flag} {host}:{port}: the port is in use by another process; stop it, or "
                                "choose another port (port 0 picks a free one)") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise BindError(f"{flag} {host}:{port}: {host} is not an address of this machine") from None
            if exc.errno == errno.EACCES:
                raise BindError(f"{flag} {host}:{port}: not allowed to listen on port {port} (ports below "
                                "1024 need privileges)") from None
            raise BindError(f"{flag} {host}:{port}: cannot listen there: {exc.strerror or exc}") from None
