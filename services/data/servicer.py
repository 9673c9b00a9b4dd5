"""DataService over gRPC: proto <-> domain only. The SQL work is in the backends (pg_backend, sqlite_backend)."""

from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.config import Settings
from services.core.context import current_call, current_principal
from services.core.db import open_platform_db
from services.core.errors import InvalidArgument
from services.core.policy import governed, subject_of
from services.core.policy.access import checked_subject
from services.core.server import Runtime, ServiceSpec
from services.data.backend import open_tenant_sql
from services.data.model import (
    PROBE_LIMIT,
    PROBE_MAX_LIMIT,
    Caller,
    Json,
    Limits,
    QueryResult,
    Table,
    TenantSql,
    checked_tenant,
)

MIGRATIONS = Path(__file__).parent / "migrations"
Cell = data_pb2.Cell


# --- domain value -> Cell -------------------------------------------------------------------------------

_INT64 = (-(2**63), 2**63 - 1)


def _int_cell(value: int) -> data_pb2.Cell:
    if _INT64[0] <= value <= _INT64[1]:
        return Cell(int=value)
    return Cell(decimal=str(value))  # beyond 64 bits: exact, as text


def _jsonable(value: Any) -> Any:
    """Array elements and JSON documents as plain JSON values (exact numbers as text, bytes as \\x hex)."""
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Json):
        return value.value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    if value is None or isinstance(value, bool | int | float | str | dict):
        return value
    return str(value)


def _json_cell(value: Any) -> data_pb2.Cell:
    message = struct_pb2.Value()
    json_format.ParseDict(_jsonable(value), message)
    return Cell(json=message)


_CELLS: dict[type, Any] = {
    type(None): lambda v: Cell(null=struct_pb2.NULL_VALUE),
    bool: lambda v: Cell(bool=v),
    int: _int_cell,
    float: lambda v: Cell(float=v),
    str: lambda v: Cell(text=v),
    Decimal: lambda v: Cell(decimal=format(v, "f")),
    bytes: lambda v: Cell(bytes=v),
    memoryview: lambda v: Cell(bytes=bytes(v)),
    Json: lambda v: _json_cell(v.value),
    list: _json_cell,
    dict: _json_cell,
}


def to_cell(value: Any) -> data_pb2.Cell:
    convert = _CELLS.get(type(value))
    if convert is not None:
        return convert(value)
    isoformat = getattr(value, "isoformat", None)  # dates and times that no caster turned into text
    return Cell(text=isoformat() if isoformat else str(value))


# --- Cell -> domain value -------------------------------------------------------------------------------


def from_cell(cell: data_pb2.Cell) -> Any:
    kind = cell.WhichOneof("kind")
    if kind is None or kind == "null":
        return None
    if kind == "decimal":
        try:
            return Decimal(cell.decimal)
        except InvalidOperation:
            raise InvalidArgument(f"parameter {cell.decimal!r} is not a decimal number") from None
    if kind == "json":
        return Json(_integral(json_format.MessageToDict(cell.json)))
    return getattr(cell, kind)


_EXACT = 2**53  # every integer up to this magnitude is exact as a double


def _integral(value: Any) -> Any:
    """google.protobuf.Value holds numbers as doubles: 1 arrives as 1.0. Whole numbers that a double holds
    exactly become ints again; beyond 2**53 precision is already lost (send such documents as text)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT:
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


# --- Responses ------------------------------------------------------------------------------------------


def query_response(result: QueryResult) -> data_pb2.QueryResponse:
    return data_pb2.QueryResponse(
        columns=[data_pb2.Column(name=c.name, type=c.type) for c in result.columns],
        rows=[data_pb2.Row(values=[to_cell(v) for v in row]) for row in result.rows],
        row_count=len(result.rows),
        truncated=result.truncated,
        elapsed_ms=result.elapsed_ms,
        affected_rows=result.affected_rows,
        backend=result.backend,
    )


def table_message(table: Table) -> data_pb2.Table:
    return data_pb2.Table(
        name=table.name,
        columns=[
            data_pb2.TableColumn(
                name=c.name, type=c.type, nullable=c.nullable, primary_key=c.primary_key, default=c.default
            )
            for c in table.columns
        ],
        primary_key=table.primary_key,
        foreign_keys=[
            data_pb2.ForeignKey(
                columns=k.columns,
                references_table=k.references_table,
                references_columns=k.references_columns,
            )
            for k in table.foreign_keys
        ],
    )


def _caller() -> Caller:
    principal = current_principal()
    return Caller(
        checked_tenant(principal.tenant), principal.can_write, subject_of(principal), governed(principal)
    )


def _audit_sql(sql: str) -> None:
    """The audit log names the statement by its hash: SQL text may carry secrets."""
    current_call().audit["sql_sha256"] = hashlib.sha256(sql.encode()).hexdigest()


class DataServicer(data_pb2_grpc.DataServiceServicer):
    def __init__(self, sql: TenantSql, settings: Settings) -> None:
        self._sql = sql
        self._settings = settings

    def _limits(self, context: Any, timeout_ms: int = 0, max_rows: int = 0) -> Limits:
        return Limits.of(self._settings, timeout_ms, max_rows, context.time_remaining())

    async def Query(self, request: data_pb2.QueryRequest, context: Any) -> data_pb2.QueryResponse:
        caller = _caller()
        _audit_sql(request.sql)
        limits = self._limits(context, request.timeout_ms, request.max_rows)
        params = [from_cell(p) for p in request.params]
        return query_response(await self._sql.query(caller, request.sql, params, limits))

    async def ListTables(
        self, request: data_pb2.ListTablesRequest, context: Any
    ) -> data_pb2.ListTablesResponse:
        tables = await self._sql.list_tables(_caller(), self._limits(context))
        return data_pb2.ListTablesResponse(
            tables=[table_message(t) for t in tables], backend=self._sql.backend
        )

    async def Explain(self, request: data_pb2.ExplainRequest, context: Any) -> data_pb2.ExplainResponse:
        caller = _caller()
        _audit_sql(request.sql)
        params = [from_cell(p) for p in request.params]
        plan = await self._sql.explain(caller, request.sql, params, self._limits(context))
        return data_pb2.ExplainResponse(plan=plan.text, read_only=plan.read_only, backend=plan.backend)

    async def ApplyPolicies(
        self, request: data_pb2.ApplyPoliciesRequest, context: Any
    ) -> data_pb2.ApplyPoliciesResponse:
        """Internal (auth, before it stores a change): the tenant's whole set, compiled and applied."""
        tenant = checked_tenant(request.tenant)
        current_call().audit.update(tenant=tenant, policy_revision=request.revision)  # it acts for the tenant
        documents = [_integral(json_format.MessageToDict(policy)) for policy in request.policies]
        governed = await self._sql.apply_policies(tenant, documents, request.revision)
        return data_pb2.ApplyPoliciesResponse(governed_tables=governed)

    async def ProbePolicies(
        self, request: data_pb2.ProbePoliciesRequest, context: Any
    ) -> data_pb2.ProbePoliciesResponse:
        """Internal (auth's live dry run): the rows `subject` may read/update/delete under `policies`, found
        by running the enforcement in a rolled-back transaction."""
        tenant = checked_tenant(request.tenant)
        subject = checked_subject(json_format.MessageToDict(request.subject), tenant)
        current_call().audit.update(tenant=tenant, table=request.table, probe_subject=subject["sub"])
        documents = [_integral(json_format.MessageToDict(policy)) for policy in request.policies]
        probe = await self._sql.probe_policies(
            tenant, documents, request.table, subject, probe_limit(request.limit), self._limits(context)
        )
        return data_pb2.ProbePoliciesResponse(
            governed=probe.governed,
            rows=[
                data_pb2.ProbedRow(
                    record=_struct(row.record), read=row.read, update=row.update, delete=row.delete
                )
                for row in probe.rows
            ],
            truncated=probe.truncated,
        )


def probe_limit(limit: int) -> int:
    if limit < 0:
        raise InvalidArgument(f"limit must be 0 (the default, {PROBE_LIMIT}) or more", field="limit")
    return min(limit or PROBE_LIMIT, PROBE_MAX_LIMIT)


def _struct(record: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(_jsonable_record(record))
    return message


def _jsonable_record(record: dict[str, Any]) -> dict[str, Any]:
    return {str(key): _jsonable(value) for key, value in record.items()}


async def build(runtime: Runtime) -> list[ServiceSpec]:
    """The data service: platform tables (its own migrations), then the tenant SQL backend of the same mode."""
    db = await open_platform_db(runtime.settings, runtime.deps, migrations=MIGRATIONS)
    runtime.closers.append(db.close)
    sql = open_tenant_sql(runtime.settings, db)
    runtime.closers.append(sql.close)
    servicer = DataServicer(sql, runtime.settings)
    descriptor = data_pb2.DESCRIPTOR.services_by_name["DataService"]
    return [ServiceSpec(descriptor, servicer, data_pb2_grpc.add_DataServiceServicer_to_server)]
