from google.api import annotations_pb2 as _annotations_pb2
from launchpad.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Suggestion(_message.Message):
    __slots__ = ("sql", "explanation", "source")
    SQL_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    sql: str
    explanation: str
    source: str
    def __init__(self, sql: _Optional[str] = ..., explanation: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class SuggestSqlRequest(_message.Message):
    __slots__ = ("context", "table", "limit")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    context: str
    table: str
    limit: int
    def __init__(self, context: _Optional[str] = ..., table: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class SuggestSqlResponse(_message.Message):
    __slots__ = ("suggestions",)
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    suggestions: _containers.RepeatedCompositeFieldContainer[Suggestion]
    def __init__(self, suggestions: _Optional[_Iterable[_Union[Suggestion, _Mapping]]] = ...) -> None: ...

class QueryAiRequest(_message.Message):
    __slots__ = ("question", "allow_writes")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    ALLOW_WRITES_FIELD_NUMBER: _ClassVar[int]
    question: str
    allow_writes: bool
    def __init__(self, question: _Optional[str] = ..., allow_writes: _Optional[bool] = ...) -> None: ...

class QueryAiResponse(_message.Message):
    __slots__ = ("sql", "explanation", "source", "valid", "reason", "tables", "repaired")
    SQL_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    sql: str
    explanation: str
    source: str
    valid: bool
    reason: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    repaired: bool
    def __init__(self, sql: _Optional[str] = ..., explanation: _Optional[str] = ..., source: _Optional[str] = ..., valid: _Optional[bool] = ..., reason: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., repaired: _Optional[bool] = ...) -> None: ...
