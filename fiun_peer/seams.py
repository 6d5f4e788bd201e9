"""The agent's seam to the network: what the agent may ask of it, as typed Protocols.

The agent (``fiun_peer.agent``) never imports the network side; the daemon hands it objects that
implement these (``fiun_peer.delivery``), tests hand it small fakes. See docs/architecture.md.
"""

from __future__ import annotations

from typing import Protocol


class Publisher(Protocol):
    """Sends our own signed records to other peers."""

    async def publish(self, envelope: bytes, push_to: list[str] | None, gossip: bool) -> None:
        """Push ``envelope`` to the peers at the gRPC addresses ``push_to`` (None: every known peer)
        and, if ``gossip``, publish it on the records topic too. Returns without waiting for delivery."""
        ...


class BlobFetcher(Protocol):
    """Fetches a content-addressed blob (a Fisher) from another peer."""

    def fetch(self, target: str, digest: str) -> bytes:
        """The blob ``digest`` from the peer at gRPC ``target``, verified against its digest.
        Blocking: the agent calls it from a worker thread. Raises on any failure."""
        ...


class NoNetwork:
    """A peer without a network (tests, offline tools): publishes go nowhere, fetches fail."""

    async def publish(self, envelope: bytes, push_to: list[str] | None, gossip: bool) -> None:
        return None

    def fetch(self, target: str, digest: str) -> bytes:
        raise LookupError(f"no network to fetch {digest[:12]} from {target}")
