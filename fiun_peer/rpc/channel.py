"""Client channels with limits that fit our messages (PublishModel carries weights plus data), over
plaintext or TLS, optionally carrying the admin token."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from fiun_peer.auth import ClientTLS

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
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A channel to ``host:port``: TLS when ``tls`` is given (else plaintext), sending the admin
    ``token`` as bearer metadata on every call when given."""
    from fiun_peer.auth import with_token

    if tls is None:
        channel = insecure_channel(target, max_message_bytes=max_message_bytes)
    else:
        channel = grpc.secure_channel(target, tls.credentials(), options=channel_options(max_message_bytes))
    return with_token(channel, token)


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
