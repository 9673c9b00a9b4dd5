from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor
WEBSOCKET_FIELD_NUMBER: _ClassVar[int]
websocket: _descriptor.FieldDescriptor
TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
timeout_ms: _descriptor.FieldDescriptor
JSON_UNWRAP_FIELD_NUMBER: _ClassVar[int]
json_unwrap: _descriptor.FieldDescriptor

class Access(_message.Message):
    __slots__ = ("public", "roles", "write", "internal")
    PUBLIC_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    public: bool
    roles: _containers.RepeatedScalarFieldContainer[str]
    write: bool
    internal: bool
    def __init__(self, public: _Optional[bool] = ..., roles: _Optional[_Iterable[str]] = ..., write: _Optional[bool] = ..., internal: _Optional[bool] = ...) -> None: ...

class WebSocketRule(_message.Message):
    __slots__ = ("path", "relay")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    path: str
    relay: str
    def __init__(self, path: _Optional[str] = ..., relay: _Optional[str] = ...) -> None: ...
