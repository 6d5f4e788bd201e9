from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("name", "peer_id", "public_key", "grpc_address", "p2p_addresses", "connected_peers", "records", "models", "counters", "admin_address")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    P2P_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_PEERS_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    peer_id: str
    public_key: str
    grpc_address: str
    p2p_addresses: _containers.RepeatedScalarFieldContainer[str]
    connected_peers: int
    records: int
    models: _containers.RepeatedScalarFieldContainer[str]
    counters: _containers.ScalarMap[str, int]
    admin_address: str
    def __init__(self, name: _Optional[str] = ..., peer_id: _Optional[str] = ..., public_key: _Optional[str] = ..., grpc_address: _Optional[str] = ..., p2p_addresses: _Optional[_Iterable[str]] = ..., connected_peers: _Optional[int] = ..., records: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., counters: _Optional[_Mapping[str, int]] = ..., admin_address: _Optional[str] = ...) -> None: ...

class Parent(_message.Message):
    __slots__ = ("model_id", "relation", "digest", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    relation: str
    digest: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., relation: _Optional[str] = ..., digest: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PublishModelRequest(_message.Message):
    __slots__ = ("model_id", "weights", "data", "parents", "labels", "architecture_json", "head_tensors", "format", "head")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    HEAD_TENSORS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    weights: bytes
    data: bytes
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    labels: _containers.RepeatedScalarFieldContainer[int]
    architecture_json: str
    head_tensors: _containers.RepeatedScalarFieldContainer[str]
    format: str
    head: str
    def __init__(self, model_id: _Optional[str] = ..., weights: _Optional[bytes] = ..., data: _Optional[bytes] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., architecture_json: _Optional[str] = ..., head_tensors: _Optional[_Iterable[str]] = ..., format: _Optional[str] = ..., head: _Optional[str] = ...) -> None: ...

class PublishModelReply(_message.Message):
    __slots__ = ("model_id", "model_digest", "record_id", "parents")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_digest: str
    record_id: str
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    def __init__(self, model_id: _Optional[str] = ..., model_digest: _Optional[str] = ..., record_id: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model_id", "model_digest", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_digest: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., model_digest: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ExportModelReply(_message.Message):
    __slots__ = ("model_id", "model_digest", "version", "weights", "format", "architecture_json")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_JSON_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_digest: str
    version: int
    weights: bytes
    format: str
    architecture_json: str
    def __init__(self, model_id: _Optional[str] = ..., model_digest: _Optional[str] = ..., version: _Optional[int] = ..., weights: _Optional[bytes] = ..., format: _Optional[str] = ..., architecture_json: _Optional[str] = ...) -> None: ...

class ListLineageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLineageReply(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LineageEntry]
    def __init__(self, models: _Optional[_Iterable[_Union[LineageEntry, _Mapping]]] = ...) -> None: ...

class LineageEntry(_message.Message):
    __slots__ = ("model_id", "model_digest", "parents", "labels", "owner", "version")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    model_digest: str
    parents: _containers.RepeatedCompositeFieldContainer[Parent]
    labels: _containers.RepeatedScalarFieldContainer[int]
    owner: str
    version: int
    def __init__(self, model_id: _Optional[str] = ..., model_digest: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[Parent, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., owner: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RequestUnlearningRequest(_message.Message):
    __slots__ = ("forget_labels", "settings_json", "request_id", "force")
    FORGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    forget_labels: _containers.RepeatedScalarFieldContainer[int]
    settings_json: str
    request_id: str
    force: bool
    def __init__(self, forget_labels: _Optional[_Iterable[int]] = ..., settings_json: _Optional[str] = ..., request_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RequestUnlearningReply(_message.Message):
    __slots__ = ("request_id", "record_id", "affected_models", "discovery_models")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_MODELS_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_MODELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    record_id: str
    affected_models: _containers.RepeatedScalarFieldContainer[str]
    discovery_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., record_id: _Optional[str] = ..., affected_models: _Optional[_Iterable[str]] = ..., discovery_models: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequestRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetRequestReply(_message.Message):
    __slots__ = ("request_id", "forget_labels", "models", "done", "settings_json")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    forget_labels: _containers.RepeatedScalarFieldContainer[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelProgress]
    done: bool
    settings_json: str
    def __init__(self, request_id: _Optional[str] = ..., forget_labels: _Optional[_Iterable[int]] = ..., models: _Optional[_Iterable[_Union[ModelProgress, _Mapping]]] = ..., done: _Optional[bool] = ..., settings_json: _Optional[str] = ...) -> None: ...

class ModelProgress(_message.Message):
    __slots__ = ("model_id", "discovery", "state", "why_pending", "old_digest", "new_digest", "received_at", "applied_at", "discovery_ancestors", "reason")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WHY_PENDING_FIELD_NUMBER: _ClassVar[int]
    OLD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NEW_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    APPLIED_AT_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    discovery: bool
    state: str
    why_pending: str
    old_digest: str
    new_digest: str
    received_at: float
    applied_at: float
    discovery_ancestors: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, model_id: _Optional[str] = ..., discovery: _Optional[bool] = ..., state: _Optional[str] = ..., why_pending: _Optional[str] = ..., old_digest: _Optional[str] = ..., new_digest: _Optional[str] = ..., received_at: _Optional[float] = ..., applied_at: _Optional[float] = ..., discovery_ancestors: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ListReceiptsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ListReceiptsReply(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[Receipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[Receipt, _Mapping]]] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("request_id", "model_id", "old_digest", "new_digest", "signer", "record_id", "state", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NEW_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNER_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_id: str
    old_digest: str
    new_digest: str
    signer: str
    record_id: str
    state: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., model_id: _Optional[str] = ..., old_digest: _Optional[str] = ..., new_digest: _Optional[str] = ..., signer: _Optional[str] = ..., record_id: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
