"""Client channels with limits that fit our messages (PublishModel carries weights plus data), over
plaintext or TLS, optionally carrying the admin token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from fiun_peer.identity import Identity
    from fiun_peer.rpc.auth import ClientTLS

# gRPC's default receive limit is 4 MiB; an admin PublishModel holds a model and its data set.
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Options raising gRPC's send/receive message limits to ``max_message_bytes``."""
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


def insecure_channel(target: str, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A plaintext channel to ``host:port`` with raised message limits."""
    return grpc.insecure_channel(target, options=channel_options(max_message_bytes))


def open_channel(target: str, *, tls: ClientTLS | None = None, token: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, identity: Identity | None = None) -> grpc.Channel:
    """A channel to ``host:port``: TLS when ``tls`` is given (else plaintext), sending the admin
    ``token`` as bearer metadata on every call when given, and signing every call with the peer key
    ``identity`` when given (see ``fiun_peer.rpc.peer_auth``)."""
    from fiun_peer.rpc.auth import with_token
    from fiun_peer.rpc.peer_auth import with_signer

    return with_signer(with_token(_new_channel(target, tls, channel_options(max_message_bytes)), token), identity)


def _new_channel(target: str, tls: ClientTLS | None, options: list[tuple[str, int]]) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=options)


@contextmanager
def as_channel(channel_or_target: grpc.Channel | str, *, tls: ClientTLS | None = None) -> Iterator[grpc.Channel]:
    """Use a caller's channel as is, or open (and afterwards close) one to a ``host:port`` target."""
    if isinstance(channel_or_target, str):
        channel = open_channel(channel_or_target, tls=tls)
        try:
            yield channel
        finally:
            channel.close()
    else:
        yield channel_or_target


# A cached channel to a peer that was down must notice soon that it is back: gRPC's default
# reconnect backoff grows to 120 s.
_RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                      ("grpc.max_reconnect_backoff_ms", 2000)]


class ChannelPool:
    """One long-lived channel per peer address, shared by pushes, syncs and Fisher pulls (a channel
    per call pays a TCP, and maybe TLS, handshake each time, which on a busy peer queues up).
    ``identity``: sign every call with this peer key (what a peer with ``--allow-peers`` asks of
    its callers; see ``fiun_peer.rpc.peer_auth``). Thread-safe; ``close`` closes them all."""

    def __init__(self, *, tls: ClientTLS | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 identity: Identity | None = None) -> None:
        self._tls = tls
        self._identity = identity
        self._options = channel_options(max_message_bytes) + _RECONNECT_OPTIONS
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, target: str) -> grpc.Channel:
        from fiun_peer.rpc.peer_auth import with_signer

        with self._lock:
            if self._closed:
                raise RuntimeError("the channel pool is closed")
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = with_signer(_new_channel(target, self._tls, self._options),
                                                               self._identity)
            return channel

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
