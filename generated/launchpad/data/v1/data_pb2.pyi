from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from launchpad.api.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cell(_message.Message):
    __slots__ = ("null", "int", "float", "text", "bool", "decimal", "bytes", "json")
    NULL_FIELD_NUMBER: _ClassVar[int]
    INT_FIELD_NUMBER: _ClassVar[int]
    FLOAT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOOL_FIELD_NUMBER: _ClassVar[int]
    DECIMAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    null: _struct_pb2.NullValue
    int: int
    float: float
    text: str
    bool: bool
    decimal: str
    bytes: bytes
    json: _struct_pb2.Value
    def __init__(self, null: _Optional[_Union[_struct_pb2.NullValue, str]] = ..., int: _Optional[int] = ..., float: _Optional[float] = ..., text: _Optional[str] = ..., bool: _Optional[bool] = ..., decimal: _Optional[str] = ..., bytes: _Optional[bytes] = ..., json: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, values: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("sql", "params", "max_rows", "timeout_ms")
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    params: _containers.RepeatedCompositeFieldContainer[Cell]
    max_rows: int
    timeout_ms: int
    def __init__(self, sql: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., max_rows: _Optional[int] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("columns", "rows", "row_count", "truncated", "elapsed_ms", "affected_rows", "backend")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    AFFECTED_ROWS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    row_count: int
    truncated: bool
    elapsed_ms: float
    affected_rows: int
    backend: str
    def __init__(self, columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., row_count: _Optional[int] = ..., truncated: _Optional[bool] = ..., elapsed_ms: _Optional[float] = ..., affected_rows: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...

class ListTablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TableColumn(_message.Message):
    __slots__ = ("name", "type", "nullable", "primary_key", "default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NULLABLE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    nullable: bool
    primary_key: bool
    default: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., nullable: _Optional[bool] = ..., primary_key: _Optional[bool] = ..., default: _Optional[str] = ...) -> None: ...

class ForeignKey(_message.Message):
    __slots__ = ("columns", "references_table", "references_columns")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_TABLE_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedScalarFieldContainer[str]
    references_table: str
    references_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, columns: _Optional[_Iterable[str]] = ..., references_table: _Optional[str] = ..., references_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("name", "columns", "primary_key", "foreign_keys")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    FOREIGN_KEYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedCompositeFieldContainer[TableColumn]
    primary_key: _containers.RepeatedScalarFieldContainer[str]
    foreign_keys: _containers.RepeatedCompositeFieldContainer[ForeignKey]
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[TableColumn, _Mapping]]] = ..., primary_key: _Optional[_Iterable[str]] = ..., foreign_keys: _Optional[_Iterable[_Union[ForeignKey, _Mapping]]] = ...) -> None: ...

class ListTablesResponse(_message.Message):
    __slots__ = ("tables", "backend")
    TABLES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    backend: str
    def __init__(self, tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ..., backend: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("sql", "params")
    SQL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    params: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, sql: _Optional[str] = ..., params: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("plan", "read_only", "backend")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    plan: str
    read_only: bool
    backend: str
    def __init__(self, plan: _Optional[str] = ..., read_only: _Optional[bool] = ..., backend: _Optional[str] = ...) -> None: ...

class ApplyPoliciesRequest(_message.Message):
    __slots__ = ("tenant", "policies", "revision")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    policies: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    revision: int
    def __init__(self, tenant: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class ApplyPoliciesResponse(_message.Message):
    __slots__ = ("governed_tables",)
    GOVERNED_TABLES_FIELD_NUMBER: _ClassVar[int]
    governed_tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, governed_tables: _Optional[_Iterable[str]] = ...) -> None: ...

class ProbePoliciesRequest(_message.Message):
    __slots__ = ("tenant", "policies", "table", "subject", "limit")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    policies: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    table: str
    subject: _struct_pb2.Struct
    limit: int
    def __init__(self, tenant: _Optional[str] = ..., policies: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., table: _Optional[str] = ..., subject: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class ProbedRow(_message.Message):
    __slots__ = ("record", "read", "update", "delete")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    record: _struct_pb2.Struct
    read: bool
    update: bool
    delete: bool
    def __init__(self, record: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., read: _Optional[bool] = ..., update: _Optional[bool] = ..., delete: _Optional[bool] = ...) -> None: ...

class ProbePoliciesResponse(_message.Message):
    __slots__ = ("governed", "rows", "truncated")
    GOVERNED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    governed: bool
    rows: _containers.RepeatedCompositeFieldContainer[ProbedRow]
    truncated: bool
    def __init__(self, governed: _Optional[bool] = ..., rows: _Optional[_Iterable[_Union[ProbedRow, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...
