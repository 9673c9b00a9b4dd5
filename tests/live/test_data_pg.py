"""The data service against real PostgreSQL: value mapping, limits, errors and tenant isolation.

A private database per module (dropped afterwards), SIMULATION_MODE=false (nothing may fall back to SQLite
unnoticed), tenant names unique per run; the tenants' databases and roles (cluster-wide objects) are dropped at
the end. Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg2
import psycopg2.extensions
import pytest
from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.config import load_settings
from services.core.deps import Mode
from services.data.backend import tenant_secret
from services.data.pg_provision import LAYOUT, TenantNames, role_password, scram_verifier
from services.data.servicer import build
from tests.conftest import LIVE_ENV
from tests.services.test_data import Data, fails, values
from tests.support import PrivateDatabase, need_env, pg_admin, running_service

pytestmark = pytest.mark.live
Stub = data_pb2_grpc.DataServiceStub


admin = pg_admin


class LiveDb(PrivateDatabase):
    """The module's private database; tenant() names a tenant of it (dropped with it: same name prefix)."""

    def tenant(self) -> str:
        return f"lt{uuid.uuid4().hex[:10]}"

    def role(self, tenant: str, writable: bool = True) -> str:
        return TenantNames(tenant, self.name).role(writable)

    def database(self, tenant: str) -> str:
        return TenantNames(tenant, self.name).tenant_database

    def tenant_dsn(self, tenant: str) -> str:
        """The tenant's own database, as the server's administrator."""
        return psycopg2.extensions.make_dsn(self.server, dbname=self.database(tenant))


@pytest.fixture(scope="module")
def live_db() -> Iterator[LiveDb]:
    db = LiveDb(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_data_test")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def live_env(live_db: LiveDb, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> LiveDb:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    return live_db


@pytest.fixture
async def pg(live_env: LiveDb) -> AsyncIterator[Data]:
    async with running_service("data", build) as (runtime, channel):
        yield Data(Stub(channel), runtime, live_env.tenant())


@pytest.fixture
def other(pg: Data, live_env: LiveDb) -> Data:
    """A second tenant on the same server."""
    return pg.as_tenant(live_env.tenant())


# --- basics and value mapping ---------------------------------------------------------------------------


async def test_select_1_is_one_integer_on_postgres(pg: Data) -> None:
    response = await pg.query("SELECT 1")
    assert values(response) == [[1]] and response.rows[0].values[0].WhichOneof("kind") == "int"
    assert response.backend == "postgresql" and [c.type for c in response.columns] == ["integer"]
    [dep] = pg.runtime.deps.all()
    assert (dep.mode, dep.healthy) == (Mode.LIVE, True)


async def test_postgres_types_map_to_clear_values(pg: Data) -> None:
    response = await pg.query(
        "SELECT 9007199254740993::bigint AS big, 1.50::numeric(10,2) AS price, 0.1::float8 AS f,"
        " '2024-01-02 03:04:05+00'::timestamptz AT TIME ZONE 'UTC' AS ts, '2024-01-02'::date AS d,"
        " '{\"k\": [1, \"s\"]}'::jsonb AS doc, '\"str\"'::json AS js, '\\x0102'::bytea AS raw, NULL AS nothing,"
        " true AS yes, '6f1c5b0e-2d2a-4b49-9d7e-6a7f1d3c9e10'::uuid AS id, ARRAY[1, 2] AS arr,"
        " '1 day'::interval AS span, 12345678901234567890.5::numeric AS huge"
    )
    [row] = response.rows
    kinds = [cell.WhichOneof("kind") for cell in row.values]
    assert kinds == [
        "int", "decimal", "float", "text", "text", "json", "json", "bytes", "null", "bool", "text", "json",
        "text", "decimal",
    ]  # fmt: skip
    assert values(response) == [
        [
            9007199254740993, "1.50", 0.1, "2024-01-02T03:04:05", "2024-01-02", {"k": [1, "s"]}, "str",
            b"\x01\x02", None, True, "6f1c5b0e-2d2a-4b49-9d7e-6a7f1d3c9e10", [1, 2], "1 day",
            "12345678901234567890.5",
        ]
    ]  # fmt: skip
    types = [c.type for c in response.columns]
    assert (
        types[:3] == ["bigint", "numeric", "double precision"]
        and types[5] == "jsonb"
        and types[11] == "integer[]"
    )


async def test_timestamptz_is_rfc_3339_with_a_full_offset(pg: Data) -> None:
    stamp = "'2024-01-02 03:04:05.25+00'::timestamptz"
    utc = await pg.query(
        f"SELECT set_config('timezone', 'UTC', true), {stamp}, ARRAY[{stamp}], '03:04:05-03'::timetz"
    )
    assert values(utc)[0][1:] == [
        "2024-01-02T03:04:05.25+00:00",
        ["2024-01-02T03:04:05.25+00:00"],
        "03:04:05-03:00",
    ]
    india = await pg.query(f"SELECT set_config('timezone', 'Asia/Kolkata', true), {stamp}")
    assert values(india)[0][1] == "2024-01-02T08:34:05.25+05:30"


async def test_parameters_bind_as_values(pg: Data) -> None:
    response = await pg.query(
        "SELECT $1::int + $2, $3, $4::jsonb -> 'a', $5 - 1",
        data_pb2.Cell(int=2),
        data_pb2.Cell(int=3),
        data_pb2.Cell(text="it's; -- not a comment"),
        data_pb2.Cell(text='{"a": 1}'),
        data_pb2.Cell(int=-5),  # "$5 - 1" with -5 must not become "--5 - 1"
    )
    assert values(response) == [[5, "it's; -- not a comment", 1, -6]]
    code, message, _ = await fails(pg.query("SELECT $1, $2", data_pb2.Cell(int=1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "parameter" in message


async def test_writes_and_returning(pg: Data) -> None:
    await pg.query("CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL)")
    assert (await pg.query("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")).affected_rows == 3
    assert (await pg.query("UPDATE items SET name = upper(name) WHERE id > 1")).affected_rows == 2
    returned = await pg.query("DELETE FROM items WHERE id = 3 RETURNING id, name")
    assert values(returned) == [[3, "C"]] and returned.affected_rows == 1
    cte = await pg.query("WITH d AS (DELETE FROM items WHERE id = 2 RETURNING id) SELECT id FROM d")
    assert values(cte) == [[2]]  # a data-modifying WITH cannot be a cursor: it runs plainly
    assert values(await pg.query("SELECT id, name FROM items")) == [[1, "a"]]


# --- limits and errors ----------------------------------------------------------------------------------


async def test_row_cap_reads_only_what_it_returns(pg: Data) -> None:
    # 10^8 rows, produced lazily: only a cursor that fetches max_rows + 1 answers within the timeout.
    huge = "SELECT a.g FROM generate_series(1, 10000) AS a(g), generate_series(1, 10000) AS b(g)"
    response = await pg.query(huge, max_rows=5, timeout_ms=5000)
    assert values(response) == [[1], [1], [1], [1], [1]] and response.truncated and response.row_count == 5


async def test_statement_timeout_is_deadline_exceeded(pg: Data) -> None:
    code, message, details = await fails(pg.query("SELECT pg_sleep(5)", timeout_ms=200))
    assert (
        code == grpc.StatusCode.DEADLINE_EXCEEDED and details["sqlstate"] == "57014" and "200 ms" in message
    )
    assert values(await pg.query("SELECT 1")) == [[1]]


async def test_a_lock_conflict_is_aborted_and_safe_to_retry(pg: Data) -> None:
    await pg.query("CREATE TABLE jobs (id int primary key)")
    await pg.query("INSERT INTO jobs VALUES (1)")
    holder = asyncio.ensure_future(
        pg.query("WITH held AS (SELECT id FROM jobs FOR UPDATE) SELECT pg_sleep(1), count(*) FROM held")
    )
    await asyncio.sleep(0.3)
    code, message, details = await fails(pg.query("SELECT id FROM jobs FOR UPDATE NOWAIT"))
    assert code == grpc.StatusCode.ABORTED and details["sqlstate"] == "55P03", message
    await holder
    assert values(await pg.query("SELECT id FROM jobs FOR UPDATE NOWAIT")) == [[1]]  # the retry succeeds


async def test_a_tenant_cannot_lift_its_own_timeout(pg: Data) -> None:
    await pg.query("SET statement_timeout = 0")
    code, _, _ = await fails(pg.query("SELECT pg_sleep(5)", timeout_ms=200))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_syntax_error_is_invalid_argument_with_position(pg: Data) -> None:
    for sql, at in (
        ("SELECT * FROM WHERE x", "WHERE"),
        ("SELEC 1", "SELEC"),
        ("  DELETE FROM WHERE", "WHERE"),
    ):
        code, message, details = await fails(pg.query(sql))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "syntax error" in message
        assert details["sqlstate"] == "42601" and details["position"] == sql.index(at) + 1, sql


async def test_error_positions_refer_to_the_callers_text_even_with_parameters(pg: Data) -> None:
    sql = "SELECT $1, nosuch"
    _, _, details = await fails(pg.query(sql, data_pb2.Cell(text="a much longer literal than $1")))
    assert details["position"] == sql.index("nosuch") + 1


async def test_multiple_statements_are_refused(pg: Data) -> None:
    code, message, _ = await fails(pg.query("SELECT 1; SELECT 2"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "one statement" in message


# --- tenant isolation, enforced by PostgreSQL -----------------------------------------------------------


async def test_a_tenant_cannot_read_another_tenants_table(pg: Data, other: Data, live_env: LiveDb) -> None:
    await other.query("CREATE TABLE secrets (v text)")
    await other.query("INSERT INTO secrets VALUES ('other only')")
    # The other tenant's schema lives in another database: from here it does not exist at all.
    code, _, details = await fails(pg.query(f"SELECT * FROM t_{other.tenant}.secrets"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "42P01"
    code, _, details = await fails(
        pg.query(f"SELECT * FROM {live_env.database(other.tenant)}.t_{other.tenant}.secrets")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "0A000"  # cross-database
    code, _, details = await fails(pg.query("SELECT * FROM secrets"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "42P01"
    code, _, _ = await fails(pg.query(f"SELECT * FROM t_{other.tenant}.secrets", viewer=True))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert values(await other.query("SELECT v FROM secrets")) == [["other only"]]


@pytest.mark.parametrize("table", ["launchpad.data_tenants", "launchpad.schema_migrations"])
async def test_platform_tables_are_out_of_reach(pg: Data, table: str) -> None:
    code, _, details = await fails(pg.query(f"SELECT * FROM {table}"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "42P01"  # no such schema here


async def test_catalogs_show_no_other_tenant_and_no_platform_table(
    pg: Data, other: Data, live_env: LiveDb
) -> None:
    await pg.query("CREATE TABLE mine (v int)")
    await other.query("CREATE TABLE their_ledger (v int)")
    await other.query("CREATE FUNCTION their_fn() RETURNS text LANGUAGE sql AS $$ SELECT 'their-source' $$")
    # The platform database really holds the tables a tenant must not learn of (auth's, as a stand-in).
    admin(live_env.dsn, "CREATE TABLE IF NOT EXISTS launchpad.auth_users (username text PRIMARY KEY)")
    platform = {"auth_users", "schema_migrations", "data_tenants"}
    [(seen,)] = admin(
        live_env.dsn, "SELECT count(*) FROM pg_class WHERE relname = ANY(%s)", (list(platform),)
    )
    assert seen == len(platform)
    hidden = sorted(platform | {"their_ledger"})
    for viewer in (False, True):
        for sql in (
            "SELECT relname::text FROM pg_class WHERE relname = ANY($1::text[])",
            "SELECT tablename::text FROM pg_tables WHERE tablename = ANY($1::text[])",
            "SELECT table_name::text FROM information_schema.tables WHERE table_name = ANY($1::text[])",
        ):
            response = await pg.query(sql, data_pb2.Cell(text="{" + ",".join(hidden) + "}"), viewer=viewer)
            assert values(response) == [], sql
        sources = await pg.query(
            "SELECT proname::text FROM pg_proc WHERE prosrc LIKE '%their-source%'", viewer=viewer
        )
        assert values(sources) == []
        schemas = await pg.query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 't\\_%'", viewer=viewer
        )
        assert values(schemas) == [[f"t_{pg.tenant}"]]
        # The tenant database's own `launchpad` schema holds the policy helpers (claims()), never a table.
        tables = await pg.query(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'launchpad'",
            viewer=viewer,
        )
        assert values(tables) == [[0]]
    # The other tenant sees its own objects the same way: the queries above would have found them.
    assert values(
        await other.query("SELECT proname::text FROM pg_proc WHERE prosrc LIKE '%their-source%'")
    ) == [["their_fn"]]
    assert values(
        await other.query("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()")
    ) == [["their_ledger"]]
    # pg_database is cluster-wide (a documented limit): the other database's name shows, but nobody may enter.
    own, theirs = live_env.database(pg.tenant), live_env.database(other.tenant)
    access = await pg.query(
        "SELECT has_database_privilege($1, 'CONNECT'), has_database_privilege($2, 'CONNECT'),"
        " has_database_privilege('public', $2, 'CONNECT')",
        data_pb2.Cell(text=own),
        data_pb2.Cell(text=theirs),
    )
    assert values(access) == [[True, False, False]]


async def test_each_tenant_database_revokes_what_the_platform_database_does(
    pg: Data, live_env: LiveDb
) -> None:
    await pg.query("SELECT 1")
    checks = admin(
        live_env.tenant_dsn(pg.tenant),
        "SELECT has_function_privilege('public', 'pg_catalog.lo_from_bytea(oid, bytea)', 'EXECUTE'),"
        " has_function_privilege('public', 'pg_catalog.pg_advisory_lock(bigint)', 'EXECUTE'),"
        " has_schema_privilege('public', 'public', 'CREATE'),"
        " has_database_privilege('public', current_database(), 'CONNECT'),"
        " has_database_privilege('public', current_database(), 'TEMPORARY'),"
        " has_database_privilege(%s, current_database(), 'TEMPORARY'),"
        " has_database_privilege(%s, current_database(), 'TEMPORARY'),"
        " (SELECT datdba = current_user::regrole FROM pg_database WHERE datname = current_database())",
        (live_env.role(pg.tenant), live_env.role(pg.tenant, False)),
    )
    assert checks == [(False, False, False, False, False, True, False, True)]


@pytest.mark.parametrize(
    "sql",
    [
        "SET ROLE postgres",
        "SELECT set_config('role', 'postgres', false)",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT pg_read_file('/etc/passwd')",
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "SELECT lo_import('/etc/passwd')",
        "CREATE TABLE public.shared (v text)",
        "ALTER ROLE CURRENT_USER SUPERUSER",
        "CREATE ROLE sneaky",
        "CREATE SCHEMA sneaky",
    ],
)
async def test_privilege_raising_sql_fails(pg: Data, sql: str) -> None:
    code, _, details = await fails(pg.query(sql))
    assert code == grpc.StatusCode.PERMISSION_DENIED, details


async def test_reset_role_gives_nothing_more(pg: Data, other: Data, live_env: LiveDb) -> None:
    await other.query("CREATE TABLE secrets (v text)")
    await pg.query("RESET ROLE")
    code, _, details = await fails(pg.query(f"SELECT * FROM t_{other.tenant}.secrets"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "42P01"  # another database
    [[role]] = values(await pg.query("SELECT current_user"))
    assert role == live_env.role(pg.tenant)


async def test_tenant_roles_are_plain_logins_without_memberships(pg: Data, live_env: LiveDb) -> None:
    await pg.query("SELECT 1", viewer=True)
    for role in (live_env.role(pg.tenant), live_env.role(pg.tenant, False)):
        [(superuser, createrole, createdb, bypassrls)] = admin(
            live_env.dsn,
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles WHERE rolname = %s",
            (role,),
        )
        assert not (superuser or createrole or createdb or bypassrls)
        members = admin(
            live_env.dsn,
            "SELECT 1 FROM pg_auth_members WHERE member = (SELECT oid FROM pg_roles WHERE rolname = %s)",
            (role,),
        )
        assert members == []


async def test_viewers_read_tables_created_later_but_never_write(pg: Data) -> None:
    await pg.query("SELECT 1", viewer=True)  # the tenant exists before the table does
    await pg.query("CREATE TABLE notes (v text)")
    await pg.query("INSERT INTO notes VALUES ('x')")
    assert values(await pg.query("SELECT v FROM notes", viewer=True)) == [["x"]]
    for sql in ("INSERT INTO notes VALUES ('y')", "DELETE FROM notes", "CREATE TABLE more (v text)",
                "CREATE TEMP TABLE scratch (v text)", "DROP TABLE notes"):  # fmt: skip
        code, _, _ = await fails(pg.query(sql, viewer=True))
        assert code == grpc.StatusCode.PERMISSION_DENIED, sql
    assert values(await pg.query("SELECT v FROM notes")) == [["x"]]


async def test_session_state_never_leaks_into_the_next_call(pg: Data, live_env: LiveDb) -> None:
    await pg.query("CREATE TABLE mine (v int)")
    await pg.query("SET search_path = public")
    assert values(await pg.query("SELECT count(*) FROM mine")) == [[0]]
    await pg.query("CREATE TEMP TABLE scratch (v int)")
    code, _, _ = await fails(pg.query("SELECT count(*) FROM scratch"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # DISCARD TEMP dropped it with the call


# --- schema information ---------------------------------------------------------------------------------


async def test_list_tables_on_postgres(pg: Data) -> None:
    await pg.query("CREATE TABLE authors (id bigserial PRIMARY KEY, name text NOT NULL DEFAULT 'anon')")
    await pg.query(
        "CREATE TABLE books (isbn text, edition int, author bigint REFERENCES authors(id), PRIMARY KEY (isbn, edition))"
    )
    response = await pg.stub.ListTables(data_pb2.ListTablesRequest(), metadata=pg.viewer)
    tables = {t.name: t for t in response.tables}
    assert response.backend == "postgresql" and set(tables) == {"authors", "books"}
    id_column, name_column = tables["authors"].columns
    assert (id_column.type, id_column.nullable, id_column.primary_key) == ("bigint", False, True)
    assert id_column.default.startswith("nextval(")
    assert (name_column.nullable, name_column.default) == (False, "'anon'::text")
    assert list(tables["books"].primary_key) == ["isbn", "edition"]
    [key] = tables["books"].foreign_keys
    assert (list(key.columns), key.references_table, list(key.references_columns)) == (
        ["author"],
        "authors",
        ["id"],
    )


async def test_list_tables_shows_only_the_callers_tenant(pg: Data, other: Data) -> None:
    await other.query("CREATE TABLE theirs (v int)")
    response = await pg.stub.ListTables(data_pb2.ListTablesRequest(), metadata=pg.dev)
    assert [t.name for t in response.tables] == []


async def test_explain_on_postgres(pg: Data) -> None:
    await pg.query("CREATE TABLE e (id int PRIMARY KEY, v text)")
    read = await pg.stub.Explain(
        data_pb2.ExplainRequest(sql="SELECT v FROM e WHERE id = $1", params=[data_pb2.Cell(int=1)]),
        metadata=pg.viewer,
    )
    assert read.read_only and "e" in read.plan and read.backend == "postgresql"
    write = await pg.stub.Explain(data_pb2.ExplainRequest(sql="DELETE FROM e"), metadata=pg.dev)
    assert not write.read_only and write.plan.startswith("Delete on e")
    locking = await pg.stub.Explain(
        data_pb2.ExplainRequest(sql="SELECT * FROM e FOR UPDATE"), metadata=pg.dev
    )
    assert not locking.read_only
    code, message, _ = await fails(
        pg.stub.Explain(data_pb2.ExplainRequest(sql="DROP TABLE e"), metadata=pg.dev)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no plan" in message
    assert values(await pg.query("SELECT count(*) FROM e")) == [[0]]


# --- start-up and provisioning under concurrency --------------------------------------------------------


async def test_replicas_starting_at_once_and_provisioning_one_tenant(live_env: LiveDb) -> None:
    tenant = live_env.tenant()

    async def replica() -> list[Any]:
        async with running_service("data", build) as (runtime, channel):
            data = Data(Stub(channel), runtime, tenant)
            return values(await data.query("SELECT current_user::text"))

    results = await asyncio.gather(*(replica() for _ in range(3)))
    assert results == [[[live_env.role(tenant)]]] * 3


async def test_a_dropped_tenant_role_is_recreated(pg: Data, live_env: LiveDb) -> None:
    await pg.query("SELECT 1", viewer=True)
    role = live_env.role(pg.tenant, False)
    admin(live_env.tenant_dsn(pg.tenant), f'DROP OWNED BY "{role}"')
    admin(live_env.dsn, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
    async with running_service("data", build) as (runtime, channel):  # a fresh process: pools are empty
        data = Data(Stub(channel), runtime, pg.tenant)
        assert values(await data.query("SELECT current_user::text", viewer=True)) == [[role]]


async def test_a_dropped_tenant_database_is_created_again(pg: Data, live_env: LiveDb) -> None:
    await pg.query("CREATE TABLE gone (v int)")
    admin(live_env.server, f'DROP DATABASE "{live_env.database(pg.tenant)}" WITH (FORCE)')
    async with running_service("data", build) as (runtime, channel):  # provisioned in this process: repaired
        data = Data(Stub(channel), runtime, pg.tenant)
        assert values(await data.query("SELECT count(*) FROM pg_tables WHERE tablename = 'gone'")) == [[0]]
        assert values(await data.query("SELECT current_database()::text", viewer=True)) == [
            [live_env.database(pg.tenant)]
        ]


async def test_tenant_role_passwords_are_stored_as_scram_of_the_derived_secret(
    pg: Data, live_env: LiveDb, settings_env: Path
) -> None:
    await pg.query("SELECT 1")
    role = live_env.role(pg.tenant)
    [(stored,)] = admin(live_env.dsn, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    iterations, salt = stored.split("$")[1].split(":")
    password = role_password(tenant_secret(load_settings("data")), role)
    assert stored == scram_verifier(password, base64.b64decode(salt), int(iterations))


def test_scram_verifier_matches_what_postgres_computes(live_env: LiveDb) -> None:
    role = f"lp_scram_{uuid.uuid4().hex[:8]}"
    admin(live_env.dsn, f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} PASSWORD 'abc123'")
    try:
        [(stored,)] = admin(live_env.dsn, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    finally:
        admin(live_env.dsn, f"DROP ROLE {role}")
    iterations, salt = stored.split("$")[1].split(":")
    assert stored == scram_verifier("abc123", base64.b64decode(salt), int(iterations))


async def test_a_constraint_checked_at_commit_is_invalid_argument(pg: Data) -> None:
    await pg.query("CREATE TABLE parent (id int PRIMARY KEY)")
    await pg.query("CREATE TABLE child (pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)")
    code, _, details = await fails(pg.query("INSERT INTO child VALUES (1)"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "23503"
    assert values(await pg.query("SELECT count(*) FROM child")) == [[0]]


# --- review fixes: byte budget, large objects, advisory locks, parameters, EXPLAIN, COPY, roles ----------


async def test_a_huge_result_stops_at_the_byte_budget_on_postgres(pg: Data) -> None:
    response = await pg.query("SELECT repeat('x', 1000000) FROM generate_series(1, 300)")
    assert response.truncated and response.row_count == 4  # 4 MiB holds four rows of 1 MB
    assert response.ByteSize() <= 4 * 1024 * 1024 and len(values(response)[0][0]) == 1_000_000


async def test_a_single_row_beyond_the_byte_budget_fails_and_changes_nothing(pg: Data) -> None:
    code, message, _ = await fails(pg.query("SELECT repeat('x', 5000000)"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "single row" in message
    await pg.query("CREATE TABLE kept (v int)")
    writing = "WITH w AS (INSERT INTO kept VALUES (1) RETURNING repeat('x', 5000000)) SELECT * FROM w"
    code, _, _ = await fails(pg.query(writing))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert values(await pg.query("SELECT count(*) FROM kept")) == [[0]]  # rolled back, not committed


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT lo_from_bytea(0, 'persistent'::bytea)",
        "SELECT lo_create(0)",
        "SELECT lo_creat(-1)",
        "SELECT lo_put(1, 0, 'x'::bytea)",
    ],
)
@pytest.mark.parametrize("viewer", [True, False])
async def test_nobody_creates_or_writes_large_objects(pg: Data, sql: str, viewer: bool) -> None:
    code, _, details = await fails(pg.query(sql, viewer=viewer))
    assert code == grpc.StatusCode.PERMISSION_DENIED and details["sqlstate"] == "42501"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT pg_advisory_lock(4242)",
        "SELECT pg_advisory_lock(19536, 1)",
        "SELECT pg_advisory_xact_lock(4242)",
        "SELECT pg_try_advisory_lock(4242)",
        "SELECT pg_try_advisory_xact_lock(19536, 1)",
        "SELECT pg_advisory_lock_shared(4242)",
    ],
)
async def test_tenants_cannot_take_advisory_locks(pg: Data, sql: str) -> None:
    code, _, details = await fails(pg.query(sql))
    assert code == grpc.StatusCode.PERMISSION_DENIED and details["sqlstate"] == "42501"


async def test_numbered_parameters_bind_by_number_on_postgres(pg: Data) -> None:
    a, b = data_pb2.Cell(text="a"), data_pb2.Cell(text="b")
    assert values(await pg.query("SELECT $2, $1", a, b)) == [["b", "a"]]
    await pg.query("CREATE TABLE kv (id int PRIMARY KEY, v text)")
    await pg.query("INSERT INTO kv VALUES (1, 'old')")
    await pg.query("UPDATE kv SET v = $2 WHERE id = $1", data_pb2.Cell(int=1), data_pb2.Cell(text="new"))
    assert values(await pg.query("SELECT v FROM kv")) == [["new"]]
    for sql in ("", "-- nothing"):
        code, message, _ = await fails(pg.query(sql))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in message


async def test_json_parameters_keep_whole_numbers_on_postgres(pg: Data) -> None:
    document = json_format.ParseDict({"n": 1, "list": [2, 2.5]}, struct_pb2.Value())
    response = await pg.query("SELECT ($1::jsonb)::text", data_pb2.Cell(json=document))
    assert values(response) == [['{"n": 1, "list": [2, 2.5]}']]


@pytest.mark.parametrize(
    "sql", ["(ANALYZE) SELECT pg_sleep(2), 1", "(ANALYZE, BUFFERS) SELECT pg_sleep(2)", "ANALYZE SELECT 1"]
)
async def test_explain_takes_no_options_and_never_runs_the_statement(pg: Data, sql: str) -> None:
    started = time.monotonic()
    code, _, _ = await fails(pg.stub.Explain(data_pb2.ExplainRequest(sql=sql), metadata=pg.dev))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - started < 1.5


async def test_explain_never_advances_a_sequence(pg: Data) -> None:
    await pg.query("CREATE SEQUENCE s")
    code, _, _ = await fails(
        pg.stub.Explain(data_pb2.ExplainRequest(sql="(ANALYZE) SELECT nextval('s')"), metadata=pg.dev)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    union = await pg.stub.Explain(
        data_pb2.ExplainRequest(sql="(SELECT nextval('s')) UNION (SELECT 2)"), metadata=pg.dev
    )
    assert "Result" in union.plan or "Append" in union.plan
    assert values(await pg.query("SELECT nextval('s')")) == [[1]]


@pytest.mark.parametrize("sql", ["COPY (SELECT 1) TO STDOUT", "COPY copied FROM STDIN"])
async def test_copy_to_or_from_the_client_is_invalid_argument(pg: Data, sql: str) -> None:
    await pg.query("CREATE TABLE copied (v int)")
    code, message, _ = await fails(pg.query(sql))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and "COPY to or from the client is not supported" in message
    )
    assert values(await pg.query("SELECT 1")) == [[1]]


async def test_a_tenants_own_role_settings_never_lift_the_timeout(pg: Data, live_env: LiveDb) -> None:
    await pg.query("ALTER ROLE CURRENT_USER SET statement_timeout = 0")  # PostgreSQL lets a role do this
    admin(live_env.dsn, "DELETE FROM launchpad.data_tenants WHERE tenant = %s", (pg.tenant,))
    async with running_service("data", build) as (runtime, channel):  # new sessions, provisioned again
        data = Data(Stub(channel), runtime, pg.tenant)
        code, _, _ = await fails(data.query("SELECT pg_sleep(5)", timeout_ms=200))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    settings = admin(
        live_env.dsn,
        "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = %s::regrole ORDER BY 1",
        (live_env.role(pg.tenant),),
    )
    assert [s for (s,) in settings] == [f"search_path=t_{pg.tenant}", "statement_timeout=30000"]


async def test_without_reprovisioning_set_local_still_wins(pg: Data) -> None:
    await pg.query("ALTER ROLE CURRENT_USER SET statement_timeout = 0")
    async with running_service("data", build) as (runtime, channel):  # fresh sessions pick the default up
        data = Data(Stub(channel), runtime, pg.tenant)
        code, _, _ = await fails(data.query("SELECT pg_sleep(5)", timeout_ms=200))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_tenant_roles_are_per_database(live_env: LiveDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two deployments on one server (CI's database, a dev database) with the same tenant never collide."""
    tenant = live_env.tenant()
    second = LiveDb(live_env.server, "lp_data_second")
    try:
        async with running_service("data", build) as (runtime, channel):
            first = Data(Stub(channel), runtime, tenant)
            assert values(await first.query("SELECT current_user::text")) == [[live_env.role(tenant)]]
            monkeypatch.setenv("POSTGRES_DSN", second.dsn)
            monkeypatch.setenv("LAUNCHPAD_TENANT_DB_SECRET", "another deployment's secret")
            async with running_service("data", build) as (runtime2, channel2):
                other = Data(Stub(channel2), runtime2, tenant)
                assert values(await other.query("SELECT current_user::text")) == [[second.role(tenant)]]
            assert second.role(tenant) != live_env.role(tenant)
            assert values(await first.query("SELECT 1")) == [[1]]  # its password was not reset
        assert second.database(tenant) != live_env.database(tenant)
        [(granted, crossed)] = admin(
            live_env.server,
            "SELECT has_database_privilege(%s, %s, 'CONNECT'), has_database_privilege(%s, %s, 'CONNECT')",
            (
                live_env.role(tenant),
                live_env.database(tenant),
                second.role(tenant),
                live_env.database(tenant),
            ),
        )
        assert granted and not crossed
        assert len(live_env.role("a" * 40)) <= 63 and len(live_env.database("a" * 40)) <= 63
    finally:
        second.drop()


async def test_a_tenant_of_the_schema_layout_gets_an_empty_database_and_its_old_schema_stays(
    pg: Data, live_env: LiveDb
) -> None:
    """Layout 2 kept every tenant in a schema of the platform database: nothing is moved, nothing deleted."""
    tenant = live_env.tenant()
    admin(
        live_env.dsn,
        f"CREATE SCHEMA t_{tenant}; CREATE TABLE t_{tenant}.old (v int); INSERT INTO t_{tenant}.old VALUES (7);"
        " INSERT INTO launchpad.data_tenants (tenant, backend, layout) VALUES (%s, 'postgresql', 2)",
        (tenant,),
    )
    data = pg.as_tenant(tenant)
    code, _, details = await fails(data.query("SELECT v FROM old"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details["sqlstate"] == "42P01"
    assert (await data.query("CREATE TABLE fresh (v int)")).affected_rows == 0
    assert values(await data.query("SELECT current_database()::text")) == [[live_env.database(tenant)]]
    assert admin(live_env.dsn, f"SELECT v FROM t_{tenant}.old") == [(7,)]
    assert admin(live_env.dsn, "SELECT layout FROM launchpad.data_tenants WHERE tenant = %s", (tenant,)) == [
        (LAYOUT,)
    ]
