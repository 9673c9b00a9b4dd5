"""The data service over gRPC, called *as the caller*: their bearer token and request id travel with every
call, so the data service scopes schema, dry runs and value lookups to the caller's tenant and role (the AI
service never sees another tenant's schema, and never acts with more rights than the caller)."""

from __future__ import annotations

import time

import grpc

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.ai.render import ident
from services.ai.schema import Column, DryRunRejected, ForeignKey, Plan, Schema, Table
from services.core.clients import internal_channel
from services.core.errors import DeadlineExceeded, Unavailable

CALL_TIMEOUT_S = 10.0
LOOKUP_ROWS = 200
# The database refused the statement itself (as opposed to the data service being unable to answer).
_REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


class DataService:
    """One channel to the data service per process, created on first use (inside the event loop)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: data_pb2_grpc.DataServiceStub | None = None

    def stub(self) -> data_pb2_grpc.DataServiceStub:
        if self._stub is None:
            self._channel = internal_channel(self.address)
            self._stub = data_pb2_grpc.DataServiceStub(self._channel)
        return self._stub

    def as_caller(self, metadata: tuple[tuple[str, str], ...], deadline: float | None) -> CallerDb:
        return CallerDb(self, metadata, deadline)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class CallerDb:
    """services.ai.schema.TenantDb for one RPC: the caller's tenant, reached with the caller's identity."""

    def __init__(
        self, data: DataService, metadata: tuple[tuple[str, str], ...], deadline: float | None
    ) -> None:
        self._data, self._metadata, self._deadline = data, metadata, deadline
        self._schema: Schema | None = None

    def _timeout(self) -> float:
        if self._deadline is None:
            return CALL_TIMEOUT_S
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the call's deadline passed before the data service could be asked")
        return min(CALL_TIMEOUT_S, left)

    async def _call(self, method: str, request: object) -> object:
        rpc = getattr(self._data.stub(), method)
        try:
            return await rpc(request, metadata=self._metadata, timeout=self._timeout())
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(f"the data service at {self._data.address} is not available") from None
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineExceeded(f"the data service did not answer {method} in time") from None
            raise

    async def schema(self) -> Schema:
        if self._schema is None:
            response = await self._call("ListTables", data_pb2.ListTablesRequest())
            assert isinstance(response, data_pb2.ListTablesResponse)
            self._schema = Schema(tuple(_table(t) for t in response.tables), response.backend)
        return self._schema

    async def explain(self, sql: str) -> Plan:
        try:
            response = await self._call("Explain", data_pb2.ExplainRequest(sql=sql))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSALS:
                raise DryRunRejected(exc.details() or exc.code().name) from None
            raise
        assert isinstance(response, data_pb2.ExplainResponse)
        return Plan(response.plan, response.read_only)

    async def find_values(self, table: str, columns: list[str], phrases: list[str]) -> list[tuple[str, str]]:
        """One query per table: which of `phrases` are stored (ignoring case) in which text column."""
        if not columns or not phrases:
            return []
        marks = ", ".join(f"${n}" for n in range(1, len(phrases) + 1))
        parts = [
            f"SELECT '{c.replace(chr(39), chr(39) * 2)}' AS c, CAST({ident(c)} AS TEXT) AS v FROM {ident(table)} "
            f"WHERE lower(CAST({ident(c)} AS TEXT)) IN ({marks})"
            for c in columns
        ]
        sql = f"SELECT DISTINCT c, v FROM ({' UNION ALL '.join(parts)}) AS found LIMIT {LOOKUP_ROWS}"
        params = [data_pb2.Cell(text=p.lower()) for p in phrases]
        request = data_pb2.QueryRequest(sql=sql, params=params, max_rows=LOOKUP_ROWS)
        try:
            response = await self._call("Query", request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSALS:
                return []  # e.g. a column lower() cannot read: its values are simply not found
            raise
        assert isinstance(response, data_pb2.QueryResponse)
        return [(row.values[0].text, row.values[1].text) for row in response.rows if row.values[1].text]


def _table(table: data_pb2.Table) -> Table:
    keys = set(table.primary_key)
    return Table(
        table.name,
        tuple(Column(c.name, c.type, c.primary_key or c.name in keys) for c in table.columns),
        tuple(
            ForeignKey(tuple(k.columns), k.references_table, tuple(k.references_columns))
            for k in table.foreign_keys
        ),
    )
