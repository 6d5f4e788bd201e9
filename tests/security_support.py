"""Shared by the security, fuzz and load tests: test certificates, and one in-process peer (a real
Agent on a real trio loop, with real Admin/Fisher/Record servicers on a loopback gRPC port)."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fiun_peer.agent import Agent
from fiun_peer.bridge import TrioBridge
from fiun_peer.identity import Identity
from fiun_peer.membership import learn_hello
from fiun_peer.policy import RequesterPolicy
from fiun_peer.rpc.admin_service import AdminServicer
from fiun_peer.rpc.auth import AdminAuth, ServerTLS
from fiun_peer.rpc.fisher_service import FisherServicer
from fiun_peer.rpc.record_service import RecordServicer
from fiun_peer.rpc.server import make_server
from fiun_peer.store import Store

# -- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key)
        return cert, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A throwaway certificate authority issuing loopback server and client certificates."""

    def __init__(self, cn: str = "fiun-test-ca") -> None:
        self.cn = cn
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._build(_name(cn), self._key.public_key(), ca=True).public_bytes(serialization.Encoding.PEM)

    def _build(self, subject: x509.Name, public_key: Any, *, ca: bool, san: bool = False) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(_name(self.cn))
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return b.sign(self._key, hashes.SHA256())

    def issue(self, cn: str) -> Pem:
        """A certificate for ``cn`` that is valid both as a loopback server and as a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._build(_name(cn), key.public_key(), ca=False, san=True)
        return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# -- an in-process peer ------------------------------------------------------------------------------


class _Network:
    """The agent's network seam (fiun_peer.seams) for a host without one: published records are
    kept in a list, fetches go to the given function."""

    def __init__(self, published: list[bytes], fetch: Callable[[str, str], bytes]) -> None:
        self._published, self._fetch = published, fetch

    async def publish(self, envelope: bytes, push_to: list[str] | None, gossip: bool) -> None:
        self._published.append(envelope)

    def fetch(self, target: str, digest: str) -> bytes:
        return self._fetch(target, digest)


class AgentHost:
    """``with AgentHost(home) as h:`` runs an Agent on its own trio loop in a thread, behind real
    Admin/Fisher/Record servicers on ``h.target``. ``h.call(fn, *args)`` runs ``fn`` on that loop."""

    def __init__(self, home: Path, *, identity: Identity | None = None, token: str | None = "test-token",
                 tls: ServerTLS | None = None, max_message_bytes: int | None = None,
                 fetch_blob: Callable[[str, str], bytes] | None = None,
                 requesters: RequesterPolicy | None = None) -> None:
        self.home = Path(home)
        self.identity = identity or Identity.generate("host")
        self.token = token
        self._tls, self._max = tls, max_message_bytes
        self._fetch = fetch_blob or (lambda target, digest: (_ for _ in ()).throw(LookupError("no fetch")))
        self._requesters = requesters
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: BaseException | None = None
        self.published: list[bytes] = []

    def __enter__(self) -> AgentHost:
        self._thread = threading.Thread(target=self._main, name="agent-host", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError("agent host did not start")
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs), trio_token=self._token)

    def acall(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the coroutine function ``fn`` on the agent's loop and return its result."""
        return trio.from_thread.run(functools.partial(fn, *args, **kwargs), trio_token=self._token)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # surfaced to __enter__ or the test
            self._error = exc
            self._ready.set()

    def _identify(self) -> dict:
        return {"peer_id": self.identity.peer_id, "public_key": self.identity.public_key_hex, "name": "host",
                "p2p_addresses": [], "grpc_address": self.target}

    async def _serve(self) -> None:
        self.store = Store(self.home)

        network = _Network(self.published, self._fetch)
        self.agent = Agent(self.identity, self.store, publisher=network, fetcher=network, requesters=self._requesters)
        self.bridge = TrioBridge()
        status = lambda: {"name": "host", "public_key": self.identity.public_key_hex,  # noqa: E731
                          "records": self.store.record_count(), "counters": self.store.counters()}
        kwargs: dict[str, Any] = {}
        if self._max is not None:
            kwargs["max_message_bytes"] = self._max
        self.server, port = make_server(
            "127.0.0.1:0", AdminServicer(self.agent, self.bridge, status), FisherServicer(self.store),
            RecordServicer(self.store, lambda env: self.bridge.call_sync(
                functools.partial(self.agent.ingest, env, source="push")), self._identify,
                on_hello=lambda blob: self.bridge.call_sync(learn_hello, self.agent.book, blob, self.store.incr),
                peers=list),  # an empty peer list: this host keeps no hellos
            tls=self._tls, admin_auth=AdminAuth(token=self.token) if self.token else None,
            count=self.store.incr, **kwargs)
        self.target = f"127.0.0.1:{port}"
        self.server.start()
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(self.agent.run, interval=0.2))
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.bridge.close()
            self.server.stop(grace=None).wait()
            self.store.close()
