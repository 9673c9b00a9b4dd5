"""The data service on a real grpc.aio server (port 0), on the embedded SQLite backend.

tests/live/test_data_pg.py runs the same kind of checks against real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.deps import Mode
from services.core.interceptors import DETAILS_KEY
from services.data.servicer import build
from tests.support import make_token, metadata, running_service

Stub = data_pb2_grpc.DataServiceStub


class Data:
    """A stub plus tokens for a developer and a viewer of one tenant."""

    def __init__(self, stub: Stub, runtime: Any, tenant: str = "acme") -> None:
        self.stub, self.runtime, self.tenant = stub, runtime, tenant
        self.dev = metadata(make_token(sub="dev", tenant=tenant, roles=("developer",)))
        self.viewer = metadata(make_token(sub="viewer", tenant=tenant, roles=("viewer",)))

    def as_tenant(self, tenant: str) -> Data:
        return Data(self.stub, self.runtime, tenant)

    async def query(self, sql: str, *params: data_pb2.Cell, viewer: bool = False, **fields: Any):
        request = data_pb2.QueryRequest(sql=sql, params=params, **fields)
        return await self.stub.Query(request, metadata=self.viewer if viewer else self.dev)


@pytest.fixture
async def data(settings_env: Path) -> AsyncIterator[Data]:
    async with running_service("data", build) as (runtime, channel):
        yield Data(Stub(channel), runtime)


async def fails(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    """Status code, message and structured details of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    trailing = dict(err.value.trailing_metadata() or ())
    details = orjson.loads(trailing[DETAILS_KEY])[0] if DETAILS_KEY in trailing else {}
    return err.value.code(), err.value.details(), details


def values(response: data_pb2.QueryResponse) -> list[list[Any]]:
    """Rows as the JSON a REST client sees (proto field names, bare cell values)."""
    return [[_bare(cell) for cell in row.values] for row in response.rows]


def _bare(cell: data_pb2.Cell) -> Any:
    which = cell.WhichOneof("kind")
    if which == "json":
        return json_format.MessageToDict(cell.json)
    return None if which in (None, "null") else getattr(cell, which)


async def test_select_1_is_one_row_with_one_integer_cell(data: Data) -> None:
    response = await data.query("SELECT 1")
    assert values(response) == [[1]]
    assert response.rows[0].values[0].WhichOneof("kind") == "int"
    assert response.row_count == 1 and not response.truncated and response.backend == "sqlite"
    assert [(c.name, c.type) for c in response.columns] == [("1", "integer")]
    assert response.elapsed_ms >= 0


async def test_the_embedded_backend_is_reported_as_such(data: Data) -> None:
    [dep] = data.runtime.deps.all()
    assert (dep.name, dep.mode, dep.healthy) == ("sql", Mode.EMBEDDED, True)


async def test_values_keep_their_types(data: Data) -> None:
    await data.query("CREATE TABLE t (id INTEGER PRIMARY KEY, big INTEGER, price REAL, name TEXT, raw BLOB)")
    insert = "INSERT INTO t (big, price, name, raw) VALUES (?, ?, ?, ?)"
    params = [
        data_pb2.Cell(int=2**62 + 1),
        data_pb2.Cell(float=1.25),
        data_pb2.Cell(text="é"),
        data_pb2.Cell(bytes=b"\0"),
    ]
    assert (await data.query(insert, *params)).affected_rows == 1
    await data.query("INSERT INTO t (big) VALUES (NULL)")
    response = await data.query("SELECT id, big, price, name, raw FROM t ORDER BY id")
    assert values(response) == [[1, 2**62 + 1, 1.25, "é", b"\0"], [2, None, None, None, None]]


async def test_writes_report_affected_rows(data: Data) -> None:
    await data.query("CREATE TABLE n (v INTEGER)")
    assert (await data.query("INSERT INTO n VALUES (1), (2), (3)")).affected_rows == 3
    assert (await data.query("UPDATE n SET v = v + 1 WHERE v > 1")).affected_rows == 2
    returning = await data.query("DELETE FROM n RETURNING v", max_rows=1)
    assert returning.affected_rows == 3 and returning.truncated and returning.row_count == 1
    assert values(await data.query("SELECT count(*) FROM n")) == [[0]]  # the capped RETURNING still committed


async def test_row_cap_sets_truncated(data: Data) -> None:
    sql = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 50) SELECT n FROM s"
    capped = await data.query(sql, max_rows=10)
    assert capped.row_count == 10 and capped.truncated and values(capped)[-1] == [10]
    full = await data.query(sql, max_rows=50)
    assert full.row_count == 50 and not full.truncated


async def test_a_long_statement_hits_the_timeout(data: Data) -> None:
    endless = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s) SELECT count(*) FROM s"
    code, message, _ = await fails(data.query(endless, timeout_ms=50))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "50 ms" in message
    assert values(await data.query("SELECT 2")) == [[2]]  # the connection is fine afterwards


async def test_syntax_errors_are_invalid_argument_with_the_database_message(data: Data) -> None:
    code, message, details = await fails(data.query("SELEC 1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'near "SELEC": syntax error' in message and details == {"sqlite_error": "SQLITE_ERROR"}


async def test_multiple_statements_are_refused(data: Data) -> None:
    code, message, _ = await fails(data.query("SELECT 1; SELECT 2"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one statement" in message


async def test_tenants_cannot_see_each_other(data: Data) -> None:
    await data.query("CREATE TABLE secrets (v TEXT)")
    await data.query("INSERT INTO secrets VALUES ('acme only')")
    other = data.as_tenant("globex")
    code, message, _ = await fails(other.query("SELECT * FROM secrets"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no such table" in message
    assert (await other.stub.ListTables(data_pb2.ListTablesRequest(), metadata=other.dev)).tables == []


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE '{other}' AS other",
        "VACUUM INTO '{data_dir}/copy.sqlite'",
        "SELECT load_extension('/tmp/evil')",
        "PRAGMA writable_schema = ON",
        "PRAGMA query_only = OFF",
        "PRAGMA temp_store_directory = '/tmp'",
    ],
)
async def test_escapes_from_the_tenant_file_are_permission_denied(
    data: Data, settings_env: Path, sql: str
) -> None:
    await data.as_tenant("globex").query("CREATE TABLE private (v TEXT)")  # creates globex's file
    other = settings_env / "tenants" / "globex.sqlite"
    code, _, _ = await fails(data.query(sql.format(other=other, data_dir=settings_env)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not (settings_env / "copy.sqlite").exists()


async def test_harmless_pragmas_still_work(data: Data) -> None:
    await data.query("CREATE TABLE p (id INTEGER PRIMARY KEY, v TEXT)")
    response = await data.query("PRAGMA table_info(p)")
    assert [row[1] for row in values(response)] == ["id", "v"]


async def test_viewers_read_but_never_write(data: Data) -> None:
    await data.query("CREATE TABLE notes (v TEXT)")
    await data.query("INSERT INTO notes VALUES ('x')")
    assert values(await data.query("SELECT v FROM notes", viewer=True)) == [["x"]]
    for sql in (
        "INSERT INTO notes VALUES ('y')",
        "DELETE FROM notes",
        "CREATE TABLE more (v TEXT)",
        "CREATE TEMP TABLE scratch (v TEXT)",
        "DROP TABLE notes",
    ):
        code, _, _ = await fails(data.query(sql, viewer=True))
        assert code == grpc.StatusCode.PERMISSION_DENIED, sql
    assert values(await data.query("SELECT v FROM notes")) == [["x"]]


async def test_a_transaction_left_open_never_outlives_the_call(data: Data) -> None:
    await data.query("CREATE TABLE tx (v INTEGER)")
    await data.query("BEGIN")
    await data.query("INSERT INTO tx VALUES (1)")  # autocommits: the BEGIN was rolled back after its call
    assert values(await data.query("SELECT count(*) FROM tx", viewer=True)) == [[1]]


async def test_list_tables_describes_columns_keys_and_foreign_keys(data: Data) -> None:
    await data.query("CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT 'anon')")
    await data.query(
        "CREATE TABLE books (isbn TEXT, edition INTEGER, author INTEGER REFERENCES authors(id), title TEXT,"
        " PRIMARY KEY (isbn, edition))"
    )
    response = await data.stub.ListTables(data_pb2.ListTablesRequest(), metadata=data.viewer)
    tables = {t.name: t for t in response.tables}
    assert response.backend == "sqlite" and set(tables) == {"authors", "books"}
    name = tables["authors"].columns[1]
    assert (name.name, name.type, name.nullable, name.primary_key, name.default) == (
        "name",
        "TEXT",
        False,
        False,
        "'anon'",
    )
    assert list(tables["books"].primary_key) == ["isbn", "edition"]
    [key] = tables["books"].foreign_keys
    assert (list(key.columns), key.references_table, list(key.references_columns)) == (
        ["author"],
        "authors",
        ["id"],
    )
    assert [c.nullable for c in tables["books"].columns] == [False, False, True, True]


async def test_explain_plans_without_running(data: Data) -> None:
    await data.query("CREATE TABLE e (id INTEGER PRIMARY KEY, v TEXT)")
    read = await data.stub.Explain(
        data_pb2.ExplainRequest(sql="SELECT v FROM e WHERE id = ?", params=[data_pb2.Cell(int=1)]),
        metadata=data.viewer,
    )
    assert read.read_only and "e" in read.plan and read.backend == "sqlite"
    write = await data.stub.Explain(data_pb2.ExplainRequest(sql="DELETE FROM e"), metadata=data.dev)
    assert not write.read_only
    await data.query("INSERT INTO e (v) VALUES ('kept')")
    await data.stub.Explain(data_pb2.ExplainRequest(sql="DELETE FROM e"), metadata=data.dev)
    assert values(await data.query("SELECT count(*) FROM e")) == [[1]]


async def test_parameters_bind_positionally(data: Data) -> None:
    response = await data.query(
        "SELECT ? + ?, ?", data_pb2.Cell(int=2), data_pb2.Cell(int=3), data_pb2.Cell(text="x")
    )
    assert values(response) == [[5, "x"]]
    code, _, _ = await fails(data.query("SELECT ?, ?", data_pb2.Cell(int=1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_queries_of_many_tenants_all_succeed(data: Data) -> None:
    tenants = [data.as_tenant(f"t{i}") for i in range(6)]
    results = await asyncio.gather(*(t.query(f"SELECT {i}") for i, t in enumerate(tenants) for _ in range(5)))
    assert sorted(values(r)[0][0] for r in results) == sorted(i for i in range(6) for _ in range(5))


async def test_tenant_names_that_cannot_be_files_are_refused(data: Data) -> None:
    odd = data.as_tenant("../etc")
    code, _, _ = await fails(odd.query("SELECT 1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_audit_log_names_the_statement_by_hash(data: Data, settings_env: Path) -> None:
    await data.query("SELECT 'secret-literal'")
    audit = (settings_env / "audit.log").read_text()
    assert "sql_sha256" in audit and "secret-literal" not in audit


async def test_postgres_required_but_down_is_unavailable_never_a_fallback(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://nobody:pw@127.0.0.1:1/none")
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("data", build) as (runtime, channel):
        data = Data(Stub(channel), runtime)
        [dep] = runtime.deps.all()
        assert (dep.mode, dep.healthy) == (Mode.LIVE, False)
        for call in (
            data.query("SELECT 1"),
            data.stub.ListTables(data_pb2.ListTablesRequest(), metadata=data.dev),
        ):
            code, message, _ = await fails(call)
            assert code == grpc.StatusCode.UNAVAILABLE and "pw" not in message
    assert not (settings_env / "tenants").exists() and not (settings_env / "platform.sqlite").exists()


BIG_ROWS = (  # 300 rows of 1,000,000 characters: 300 MB if built whole
    "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 300)"
    " SELECT replace(hex(zeroblob(500000)), '0', 'x') FROM s"
)


async def test_a_huge_result_stops_at_the_byte_budget(data: Data) -> None:
    response = await data.query(BIG_ROWS)
    assert response.truncated and response.row_count == 4  # 4 MiB holds four rows of 1 MB
    assert response.ByteSize() <= 4 * 1024 * 1024 and len(values(response)[0][0]) == 1_000_000


async def test_a_single_row_beyond_the_byte_budget_is_invalid_argument(data: Data) -> None:
    code, message, _ = await fails(data.query("SELECT replace(hex(zeroblob(2500000)), '0', 'x')"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "single row" in message and "4194304" in message


async def test_numbered_parameters_bind_by_number_not_by_appearance(data: Data) -> None:
    a, b = data_pb2.Cell(text="a"), data_pb2.Cell(text="b")
    assert values(await data.query("SELECT $2, $1", a, b)) == [["b", "a"]]
    await data.query("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT)")
    await data.query("INSERT INTO kv VALUES (1, 'old')")
    updated = await data.query(
        "UPDATE kv SET v = $2 WHERE id = $1", data_pb2.Cell(int=1), data_pb2.Cell(text="new")
    )
    assert updated.affected_rows == 1 and values(await data.query("SELECT v FROM kv")) == [["new"]]
    code, message, _ = await fails(data.query("SELECT $1, $2", a))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 parameter(s)" in message
    plan = await data.stub.Explain(
        data_pb2.ExplainRequest(
            sql="SELECT v FROM kv WHERE id = $2 AND v = $1", params=[b, data_pb2.Cell(int=1)]
        ),
        metadata=data.dev,
    )
    assert "kv" in plan.plan
    code, _, _ = await fails(
        data.stub.Explain(data_pb2.ExplainRequest(sql="SELECT $2", params=[a]), metadata=data.dev)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("sql", ["", "  ;", "-- nothing"])
async def test_an_empty_statement_is_invalid_argument(data: Data, sql: str) -> None:
    code, message, _ = await fails(data.query(sql))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in message


async def test_json_parameters_keep_whole_numbers(data: Data) -> None:
    document = json_format.ParseDict({"n": 1, "list": [2, 2.5]}, struct_pb2.Value())
    [[text]] = values(await data.query("SELECT json($1)", data_pb2.Cell(json=document)))
    assert text in ('{"n":1,"list":[2,2.5]}', '{"list":[2,2.5],"n":1}')  # a Struct keeps no key order
