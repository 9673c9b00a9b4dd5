from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor
WEBSOCKET_FIELD_NUMBER: _ClassVar[int]
websocket: _descriptor.FieldDescriptor
TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
timeout_ms: _descriptor.FieldDescriptor
EDGE_FIELD_NUMBER: _ClassVar[int]
edge: _descriptor.FieldDescriptor
BYTE_STREAM_FIELD_NUMBER: _ClassVar[int]
byte_stream: _descriptor.FieldDescriptor
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
    __slots__ = ("path", "relay", "publish")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    path: str
    relay: str
    publish: str
    def __init__(self, path: _Optional[str] = ..., relay: _Optional[str] = ..., publish: _Optional[str] = ...) -> None: ...

class EdgeRule(_message.Message):
    __slots__ = ("waf_fields", "waf_skip", "raw_body", "upload_body")
    WAF_FIELDS_FIELD_NUMBER: _ClassVar[int]
    WAF_SKIP_FIELD_NUMBER: _ClassVar[int]
    RAW_BODY_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BODY_FIELD_NUMBER: _ClassVar[int]
    waf_fields: _containers.RepeatedCompositeFieldContainer[WafField]
    waf_skip: bool
    raw_body: bool
    upload_body: bool
    def __init__(self, waf_fields: _Optional[_Iterable[_Union[WafField, _Mapping]]] = ..., waf_skip: _Optional[bool] = ..., raw_body: _Optional[bool] = ..., upload_body: _Optional[bool] = ...) -> None: ...

class WafField(_message.Message):
    __slots__ = ("field", "only", "skip")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ONLY_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    field: str
    only: _containers.RepeatedScalarFieldContainer[str]
    skip: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, field: _Optional[str] = ..., only: _Optional[_Iterable[str]] = ..., skip: _Optional[_Iterable[str]] = ...) -> None: ...

class ByteStreamRule(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...
