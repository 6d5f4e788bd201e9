from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Envelope(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("have_ids", "hello")
    HAVE_IDS_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    have_ids: _containers.RepeatedScalarFieldContainer[str]
    hello: bytes
    def __init__(self, have_ids: _Optional[_Iterable[str]] = ..., hello: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "record_id", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    record_id: str
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., record_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeersReply(_message.Message):
    __slots__ = ("hellos",)
    HELLOS_FIELD_NUMBER: _ClassVar[int]
    hellos: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, hellos: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("peer_id", "public_key", "name", "p2p_addresses", "grpc_address")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    P2P_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    public_key: str
    name: str
    p2p_addresses: _containers.RepeatedScalarFieldContainer[str]
    grpc_address: str
    def __init__(self, peer_id: _Optional[str] = ..., public_key: _Optional[str] = ..., name: _Optional[str] = ..., p2p_addresses: _Optional[_Iterable[str]] = ..., grpc_address: _Optional[str] = ...) -> None: ...
