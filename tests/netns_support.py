"""A two-sided network of Linux network namespaces, for partition tests of real peers.

Layout (one lab; every name carries this process's pid and a random tag, so concurrent runs do not
clash, and a lab left behind by a killed run is recognised and removed)::

    side 0 peers (one netns each, 10.X.Y.10+i/25) --veth-- bridge b0 (root netns: 10.X.Y.1)
                                                             | veth leg 0 (10.X.Y.126)
                                                          router netns (forwards between sides)
                                                             | veth leg 1 (10.X.Y.254)
    side 1 peers (one netns each, 10.X.Y.138+i/25) --veth-- bridge b1 (root netns: 10.X.Y.129)

Each peer reaches the other side only through the router; :meth:`NetLab.partition` brings the
router's leg on side 1 down (a cut link: no packet crosses, in either direction) and
:meth:`NetLab.heal` brings it up again. The test process stays in the root namespace, where it has
an address on both bridges, so it can talk to every peer throughout; it does not forward packets
itself (sides talk to each other only through the router's routes).

Needs root (CAP_NET_ADMIN) and iproute2; :func:`unavailable_reason` says why a lab cannot be built.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from simulations.peers import Peer, PeerCluster

_PREFIX = "fiun"
_NS = re.compile(rf"{_PREFIX}-(\d+)-([0-9a-f]{{5}})-(\w+)")


class NetnsError(RuntimeError):
    """An `ip` command failed while building the lab."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")
    return out


def unavailable_reason() -> str | None:
    """None when network namespaces can be built here; otherwise why not (for pytest.skip)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if os.geteuid() != 0:
        return f"building network namespaces needs root (CAP_NET_ADMIN); running as uid {os.geteuid()}"
    probe = f"{_PREFIX}-{os.getpid()}-{secrets.token_hex(3)[:5]}-probe"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"`ip netns add` failed: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def remove_stale() -> int:
    """Remove labs whose creating process is gone (e.g. a test run that was SIGKILLed)."""
    out = _ip("netns", "list", check=False).stdout
    stale: set[str] = set()
    for line in out.splitlines():
        m = _NS.fullmatch(line.split()[0]) if line.strip() else None
        if m and not _alive(int(m[1])):
            _ip("netns", "del", m[0], check=False)
            stale.add(m[2])
    for tag in stale:
        for link in _links_with(tag):
            _ip("link", "del", link, check=False)
    return len(stale)


def _links_with(tag: str) -> list[str]:
    """Root-namespace links a lab with ``tag`` made (bridges fb*, veth ends fv*/fr*)."""
    names = [line.split(":")[1].strip().split("@")[0] for line in
             _ip("-o", "link", "show", check=False).stdout.splitlines() if ":" in line]
    return [n for n in names if n[:2] in ("fb", "fv", "fr") and n[2:7] == tag]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 no route of this machine touches."""
    used = [ipaddress.ip_network(w, strict=False) for line in _ip("-4", "route", "show", "table", "all",
                                                                 check=False).stdout.splitlines()
            for w in line.split()[:2] if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", w)]
    rng = random.Random()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsError("no free 10.x.y.0/24 subnet found")


@dataclass
class Host:
    """Where one peer lives: its namespace, address and side."""

    name: str
    netns: str
    address: str
    side: int

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@dataclass
class NetLab:
    sides: list[list[str]]
    tag: str = field(default_factory=lambda: secrets.token_hex(3)[:5])
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network | None = None
    partitioned: bool = False

    def _ns(self, what: str) -> str:
        return f"{_PREFIX}-{os.getpid()}-{self.tag}-{what}"

    @property
    def router(self) -> str:
        return self._ns("router")

    def _addr(self, side: int, host: int) -> str:
        return str(self.subnet.network_address + 128 * side + host)

    def root_address(self, side: int) -> str:
        return self._addr(side, 1)

    def build(self) -> None:
        if len(self.sides) != 2 or not all(self.sides):
            raise ValueError("a lab has exactly two non-empty sides")
        if sum(map(len, self.sides)) > 100:
            raise ValueError("at most 100 peers")
        self.subnet = _free_subnet()
        _ip("netns", "add", self.router)
        _ip("-n", self.router, "link", "set", "lo", "up")
        _ip("netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for side, names in enumerate(self.sides):
            bridge = f"fb{self.tag}{side}"
            _ip("link", "add", bridge, "type", "bridge")
            _ip("addr", "add", f"{self.root_address(side)}/25", "dev", bridge)
            _ip("link", "set", bridge, "up")
            leg = self._addr(side, 126)
            self._wire(self.router, f"fr{self.tag}{side}", f"leg{side}", bridge, leg)
            for i, name in enumerate(names):
                host = Host(name, self._ns(f"p{side}x{i}"), self._addr(side, 10 + i), side)
                _ip("netns", "add", host.netns)
                self.hosts[name] = host
                _ip("-n", host.netns, "link", "set", "lo", "up")
                self._wire(host.netns, f"fv{self.tag}{side}{i:02d}", "eth0", bridge, host.address)
                other = ipaddress.ip_network(f"{self._addr(1 - side, 0)}/25")
                _ip("-n", host.netns, "route", "add", str(other), "via", leg)

    def _wire(self, netns: str, root_end: str, inner: str, bridge: str, address: str) -> None:
        """A veth pair: ``root_end`` on ``bridge`` in the root namespace, ``inner`` in ``netns``."""
        tmp = f"{root_end}i"
        _ip("link", "add", root_end, "type", "veth", "peer", "name", tmp)
        _ip("link", "set", tmp, "netns", netns)
        _ip("-n", netns, "link", "set", tmp, "name", inner)
        _ip("-n", netns, "addr", "add", f"{address}/25", "dev", inner)
        _ip("-n", netns, "link", "set", inner, "up")
        _ip("link", "set", root_end, "master", bridge, "up")

    def teardown(self) -> list[str]:
        """Remove everything this lab made; returns what could not be removed (should be nothing)."""
        # Links first, by name: deleting a veth end removes its pair at once, while a deleted
        # namespace may linger (and keep its veths) as long as kernel sockets still refer to it.
        for link in _links_with(self.tag):
            _ip("link", "del", link, check=False)
        errors = []
        for ns in [h.netns for h in self.hosts.values()] + [self.router]:
            out = _ip("netns", "del", ns, check=False)
            if out.returncode != 0 and "No such file" not in out.stderr:
                errors.append(out.stderr.strip())
        left = [line for line in _ip("netns", "list", check=False).stdout.splitlines() if self.tag in line]
        return errors + left + _links_with(self.tag)

    def place(self, peer: Peer) -> Peer:
        """Make ``PeerCluster.start`` run ``peer`` inside its namespace, bound to its address."""
        host = self.hosts[peer.name]
        peer.host, peer.prefix = host.address, host.prefix
        return peer

    def side_of(self, name: str) -> int:
        return self.hosts[name].side

    def partition(self) -> None:
        """Cut the link between the two sides (the router's leg on side 1 goes down)."""
        _ip("-n", self.router, "link", "set", "leg1", "down")
        self.partitioned = True

    def heal(self) -> None:
        _ip("-n", self.router, "link", "set", "leg1", "up")
        self.partitioned = False

    def reachable(self, src: str, dst: str, *, port: int, timeout: float = 2.0) -> bool:
        """Whether peer ``src`` can open a TCP connection to ``dst``'s address and ``port`` now."""
        code = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                f"timeout={timeout}).close()\nexcept OSError:\n    sys.exit(1)\n")
        out = subprocess.run([*self.hosts[src].prefix, sys.executable, "-c", code, self.hosts[dst].address,
                              str(port)], capture_output=True, timeout=timeout + 30)
        return out.returncode == 0


class LabCluster(PeerCluster):
    """A :class:`PeerCluster` whose peers run inside ``lab``'s namespaces, each bound to its own
    address. The first peer starts alone (its ports are picked inside its namespace), the others
    then start bootstrapped to it."""

    def __init__(self, lab: NetLab, root: Path, **kwargs) -> None:
        super().__init__(root, [n for side in lab.sides for n in side], **kwargs)
        for peer in self.peers:
            lab.place(peer)

    def __enter__(self) -> LabCluster:
        try:
            self.init_all(self.peers)
            first, *rest = self.peers
            self.wait_ready(self.start(first))
            for peer in rest:
                self.start(peer, bootstrap=first.p2p)
            for peer in rest:
                self.wait_ready(peer)
        except BaseException:
            self.stop_all()
            raise
        return self


@contextmanager
def netlab(sides: list[list[str]]) -> Iterator[NetLab]:
    """Build a lab for peers named in ``sides`` (two lists); always torn down, also on error."""
    remove_stale()
    lab = NetLab(sides)
    try:
        lab.build()
        yield lab
    except BaseException:
        lab.teardown()
        raise
    problems = lab.teardown()
    if problems:
        raise NetnsError(f"lab {lab.tag} not fully removed (are processes still running in it?): {problems}")
