import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from launchpad.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("topic", "msg")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    topic: str
    msg: _struct_pb2.Value
    def __init__(self, topic: _Optional[str] = ..., msg: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("topic", "offset", "epoch", "timestamp")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    topic: str
    offset: int
    epoch: str
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, topic: _Optional[str] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("subscribe", "topic", "unsubscribe", "publish", "ping", "offset", "epoch")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    subscribe: str
    topic: str
    unsubscribe: str
    publish: PublishRequest
    ping: bool
    offset: int
    epoch: str
    def __init__(self, subscribe: _Optional[str] = ..., topic: _Optional[str] = ..., unsubscribe: _Optional[str] = ..., publish: _Optional[_Union[PublishRequest, _Mapping]] = ..., ping: _Optional[bool] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("type", "topic", "message", "offset", "epoch", "timestamp", "synthetic", "error", "recovered")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    type: str
    topic: str
    message: _struct_pb2.Value
    offset: int
    epoch: str
    timestamp: _timestamp_pb2.Timestamp
    synthetic: bool
    error: FrameError
    recovered: bool
    def __init__(self, type: _Optional[str] = ..., topic: _Optional[str] = ..., message: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., synthetic: _Optional[bool] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., recovered: _Optional[bool] = ...) -> None: ...

class RelayRequest(_message.Message):
    __slots__ = ("tenant", "topic", "id", "offset", "epoch", "unsubscribe", "subject", "roles")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    topic: str
    id: int
    offset: int
    epoch: str
    unsubscribe: bool
    subject: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tenant: _Optional[str] = ..., topic: _Optional[str] = ..., id: _Optional[int] = ..., offset: _Optional[int] = ..., epoch: _Optional[str] = ..., unsubscribe: _Optional[bool] = ..., subject: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class RelayResponse(_message.Message):
    __slots__ = ("tenant", "id", "frame", "replay")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    id: int
    frame: ConnectResponse
    replay: _containers.RepeatedCompositeFieldContainer[ConnectResponse]
    def __init__(self, tenant: _Optional[str] = ..., id: _Optional[int] = ..., frame: _Optional[_Union[ConnectResponse, _Mapping]] = ..., replay: _Optional[_Iterable[_Union[ConnectResponse, _Mapping]]] = ...) -> None: ...
