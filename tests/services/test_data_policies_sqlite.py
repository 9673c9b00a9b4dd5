"""Policies enforced on the embedded SQLite backend (sqlite_policies): a real data service on port 0.

Two developers (alice, bob) and a viewer (carol) of one tenant, and an `own-rows` policy: each reads, counts,
updates and deletes only its own rows; forged rows are refused; the admin is not governed. Then every way
around the shadow views we could think of, each written as a test that the bypass fails.

The policies come from a stand-in for the policy book (the real one reads auth's tables), so each test says
exactly which set is stored; a store bumps the revision as auth does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.errors import InvalidArgument, PermissionDenied
from services.core.policy import PolicySet, compile_set
from services.data.servicer import build
from services.data.sqlite_backend import SqliteTenants
from services.data.sqlite_policies import Guard, Shield, statement_mode
from services.data.sqlite_tokens import tokenize
from tests.services.test_data import fails, values
from tests.support import make_token, metadata, running_service

DENIED = grpc.StatusCode.PERMISSION_DENIED
OWN_ROWS = {
    "name": "own-rows",
    "rules": [
        {
            "effect": "allow",
            "actions": ["read", "write"],
            "resource": "notes",
            "condition": {"record.owner": "$subject.sub"},
        }
    ],
}
ROWS = [("alice", "a1"), ("alice", "a2"), ("bob", "b1"), ("bob", "not json"), ("carol", "c1")]
ROLES = {"alice": "developer", "bob": "developer", "carol": "viewer", "root": "admin"}


class Book:
    """Stands in for services.core.policy.book.PolicyBook: the set a test stored, read per call."""

    def __init__(self) -> None:
        self.policies = PolicySet()
        self.reads = 0

    async def current(self, tenant: str) -> PolicySet:
        self.reads += 1
        return self.policies

    def store(self, *documents: dict[str, Any]) -> None:
        self.policies = compile_set(list(documents), self.policies.revision + 1)


@dataclass
class Tenant:
    stub: data_pb2_grpc.DataServiceStub
    sql: SqliteTenants
    book: Book
    file: Path

    async def run(self, who: str, sql: str, *params: data_pb2.Cell, **fields: Any) -> data_pb2.QueryResponse:
        token = make_token(sub=who, roles=(ROLES[who],))
        request = data_pb2.QueryRequest(sql=sql, params=params, **fields)
        return await self.stub.Query(request, metadata=metadata(token))

    async def rows(self, who: str, sql: str) -> list[list[Any]]:
        return values(await self.run(who, sql))

    async def refused(self, who: str, sql: str) -> str:
        """The message of a statement that must be refused with PERMISSION_DENIED."""
        code, message, _ = await fails(self.run(who, sql))
        assert code == DENIED, (sql, code, message)
        return message

    async def everything(self) -> list[list[Any]]:
        return await self.rows("root", "SELECT id, owner, body FROM notes ORDER BY id")

    def direct(self, sql: str) -> None:
        """A change made outside the API (a migration, a tool): the way triggers get into a tenant file."""
        conn = sqlite3.connect(self.file, isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()


def _backend(runtime: Any) -> SqliteTenants:
    return next(
        closer.__self__
        for closer in runtime.closers
        if isinstance(getattr(closer, "__self__", None), SqliteTenants)
    )


@pytest.fixture
async def acme(settings_env: Path) -> AsyncIterator[Tenant]:
    async with running_service("data", build) as (runtime, channel):
        sql = _backend(runtime)
        book = Book()
        sql._book = book  # type: ignore[assignment]
        tenant = Tenant(
            data_pb2_grpc.DataServiceStub(channel), sql, book, settings_env / "tenants" / "acme.sqlite"
        )
        await tenant.run(
            "root", "CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, body TEXT)"
        )
        await tenant.run("root", "CREATE TABLE misc (v TEXT)")
        for owner, body in ROWS:
            await tenant.run(
                "root", "INSERT INTO notes (owner, body) VALUES ($1, $2)", _text(owner), _text(body)
            )
        book.store(OWN_ROWS)
        yield tenant


def _text(value: str) -> data_pb2.Cell:
    return data_pb2.Cell(text=value)


# --- The outcomes ---------------------------------------------------------------------------------------


async def test_each_developer_reads_counts_updates_and_deletes_only_its_own_rows(acme: Tenant) -> None:
    assert await acme.rows("alice", "SELECT id, body FROM notes ORDER BY id") == [[1, "a1"], [2, "a2"]]
    assert await acme.rows("bob", "SELECT id, body FROM notes ORDER BY id") == [[3, "b1"], [4, "not json"]]
    assert await acme.rows("alice", "SELECT count(*) FROM notes") == [[2]]
    assert await acme.rows("bob", "SELECT count(*), max(id) FROM notes WHERE id > 0") == [[2, 4]]
    updated = await acme.run("alice", "UPDATE notes SET body = body || '!'")
    assert updated.affected_rows == 2
    deleted = await acme.run("bob", "DELETE FROM notes WHERE body = 'b1'")
    assert deleted.affected_rows == 1
    none = await acme.run("bob", "DELETE FROM notes WHERE owner = 'alice'")  # not an error: nothing to delete
    assert none.affected_rows == 0
    assert await acme.everything() == [
        [1, "alice", "a1!"],
        [2, "alice", "a2!"],
        [4, "bob", "not json"],
        [5, "carol", "c1"],
    ]


async def test_the_viewer_reads_only_its_rows_and_never_writes(acme: Tenant) -> None:
    assert await acme.rows("carol", "SELECT id, owner FROM notes") == [[5, "carol"]]
    assert await acme.rows("carol", "SELECT count(*) FROM notes") == [[1]]
    for sql in (
        "INSERT INTO notes (owner, body) VALUES ('carol', 'mine')",  # the policy would allow it: roles first
        "UPDATE notes SET body = 'x'",
        "DELETE FROM notes",
    ):
        await acme.refused("carol", sql)
    assert len(await acme.everything()) == 5


async def test_forged_inserts_and_owner_changes_are_refused(acme: Tenant) -> None:
    for sql in (
        "INSERT INTO notes (owner, body) VALUES ('alice', 'forged')",
        "INSERT INTO notes (owner, body) SELECT 'alice', body FROM notes",
        "INSERT INTO notes (owner, body) VALUES ('bob', 'ok'), ('alice', 'forged')",  # all or nothing
        "UPDATE notes SET owner = 'alice'",
        "UPDATE notes SET owner = 'alice' WHERE id = 3",
    ):
        message = await acme.refused("bob", sql)
        assert message.startswith("denied by policy:") and '"notes"' in message and "a1" not in message
    assert await acme.everything() == [[i + 1, owner, body] for i, (owner, body) in enumerate(ROWS)]
    own = await acme.run("bob", "INSERT INTO notes (owner, body) VALUES ('bob', 'new') RETURNING id, owner")
    assert values(own) == [[6, "bob"]] and own.affected_rows == 1


async def test_the_admin_is_not_governed(acme: Tenant) -> None:
    reads = acme.book.reads
    assert await acme.rows("root", "SELECT count(*) FROM notes") == [[5]]
    assert (await acme.run("root", "UPDATE notes SET body = 'all'")).affected_rows == 5
    await acme.run("root", "INSERT INTO notes (owner, body) VALUES ('someone', 'else')")
    assert (await acme.run("root", "SELECT * FROM main.notes")).row_count == 6
    assert (await acme.run("root", "DELETE FROM notes")).affected_rows == 6
    assert acme.book.reads == reads  # admins do not even look the policies up


async def test_ungoverned_tables_and_tenants_are_untouched(acme: Tenant) -> None:
    await acme.run("bob", "INSERT INTO misc VALUES ('shared')")
    assert await acme.rows("alice", "SELECT v FROM main.misc") == [["shared"]]  # qualified is fine here
    acme.book.store({**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "storage:*"}]})
    assert await acme.rows("bob", "SELECT count(*) FROM notes") == [[5]]  # no table rule: no governance


async def test_a_policy_change_applies_from_the_next_statement(acme: Tenant) -> None:
    assert await acme.rows("bob", "SELECT count(*) FROM notes") == [[2]]
    acme.book.store(
        OWN_ROWS,
        {
            "name": "hide-json",
            "rules": [
                {"effect": "deny", "actions": ["read"], "resource": "notes", "condition": {"record.id": 4}}
            ],
        },
    )
    assert await acme.rows("bob", "SELECT id FROM notes") == [[3]]  # a matching deny wins
    acme.book.store()
    assert await acme.rows("bob", "SELECT count(*) FROM notes") == [[5]]


async def test_a_governed_caller_pays_one_setup_per_subject_and_schema(acme: Tenant) -> None:
    for _ in range(3):
        await acme.run("bob", "SELECT count(*) FROM notes")
    shields = [
        c.shield for t in acme.sql._tenants.values() for pool in t.idle.values() for c in pool if c.shield
    ]
    assert sum(s.installs for s in shields) == 1  # built once, reused by the next two calls
    await acme.run("root", "CREATE TABLE other (v TEXT)")  # a schema change: rebuilt once, on next use
    await acme.run("bob", "SELECT count(*) FROM notes")
    await acme.run("bob", "SELECT count(*) FROM notes")
    assert sum(s.installs for s in shields) == 2


# --- Tables and columns appearing later -----------------------------------------------------------------


async def test_a_table_created_later_that_matches_a_pattern_is_governed(acme: Tenant) -> None:
    acme.book.store({**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "notes*"}]})
    await acme.run("root", "CREATE TABLE notes_archive (owner TEXT, body TEXT)")
    await acme.run("root", "INSERT INTO notes_archive VALUES ('alice', 'old a'), ('bob', 'old b')")
    assert await acme.rows("bob", "SELECT body FROM notes_archive") == [["old b"]]
    await acme.run("bob", "CREATE TABLE notes_mine (owner TEXT, body TEXT)")  # governed from the next one
    await acme.refused("bob", "INSERT INTO notes_mine VALUES ('alice', 'forged')")
    await acme.run("bob", "INSERT INTO notes_mine VALUES ('bob', 'ok')")
    assert await acme.rows("alice", "SELECT count(*) FROM notes_mine") == [[0]]


async def test_a_policy_on_a_missing_column_denies_and_follows_add_column(acme: Tenant) -> None:
    rule = {
        "effect": "allow",
        "actions": ["read", "write"],
        "resource": "notes",
        "condition": {"record.author": "$subject.sub"},
    }
    acme.book.store({"name": "by-author", "rules": [rule]})
    assert await acme.rows("bob", "SELECT count(*) FROM notes") == [[0]]  # never an error
    await acme.refused("bob", "INSERT INTO notes (owner, body) VALUES ('bob', 'x')")
    await acme.run("root", "ALTER TABLE notes ADD COLUMN author TEXT")
    await acme.run("root", "UPDATE notes SET author = owner")
    assert await acme.rows("bob", "SELECT id, author FROM notes ORDER BY id") == [[3, "bob"], [4, "bob"]]


async def test_tables_without_rowid_are_updated_and_deleted_by_key(acme: Tenant) -> None:
    acme.book.store({**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "kv"}]})
    await acme.run(
        "root", "CREATE TABLE kv (k TEXT, n INTEGER, owner TEXT, v TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID"
    )
    await acme.run("root", "INSERT INTO kv VALUES ('a', 1, 'alice', 'x'), ('a', 2, 'bob', 'y')")
    assert (await acme.run("bob", "UPDATE kv SET v = 'z'")).affected_rows == 1
    assert (await acme.run("bob", "DELETE FROM kv WHERE k = 'a'")).affected_rows == 1
    assert await acme.rows("root", "SELECT k, n, v FROM kv") == [["a", 1, "x"]]


# --- Bypasses: none may read, count or change another user's rows --------------------------------------

QUALIFIED = [
    "SELECT * FROM main.notes",
    'SELECT * FROM "main"."notes"',
    "SELECT * FROM [main].[notes]",
    "SELECT * FROM `main`.`notes`",
    "SELECT * FROM 'main'.'notes'",
    "SELECT * FROM MAIN . /* a comment */ NOTES",
    "SELECT * FROM temp.notes",
    "SELECT count(*) FROM main.notes",
    "SELECT (SELECT group_concat(body) FROM main.notes)",
    "SELECT * FROM notes WHERE id IN (SELECT id FROM main.notes)",
    "WITH notes AS (SELECT * FROM main.notes) SELECT * FROM notes",
    "WITH x AS (SELECT * FROM main.notes) SELECT * FROM x",
    "UPDATE main.notes SET body = 'x'",
    "DELETE FROM main.notes",
    "INSERT INTO main.notes (owner, body) VALUES ('alice', 'x')",
    "SELECT main.notes.body FROM main.notes",
    "EXPLAIN SELECT * FROM main.notes",
]


@pytest.mark.parametrize("sql", QUALIFIED)
async def test_schema_qualified_names_are_refused(acme: Tenant, sql: str) -> None:
    message = await acme.refused("bob", sql)
    assert "bare name" in message
    assert len(await acme.everything()) == 5


RESERVED = [
    "WITH lp_policy_0_update AS (SELECT * FROM notes) SELECT * FROM lp_policy_0_update",
    "SELECT * FROM lp_policy_0_update",
    "SELECT lp_policy_refuse(0)",
    'DROP TRIGGER "lp_policy_0_insert"',
    "CREATE TABLE lp_policy_mine (v TEXT)",
]


@pytest.mark.parametrize("sql", RESERVED)
async def test_the_enforcement_objects_cannot_be_named(acme: Tenant, sql: str) -> None:
    assert "reserved" in await acme.refused("bob", sql)


SCHEMA_CHANGES = [
    "DROP TABLE notes",
    "DROP TABLE IF EXISTS notes",
    "DROP VIEW notes",  # our shadow view
    "ALTER TABLE notes RENAME TO escaped",
    "ALTER TABLE notes ADD COLUMN extra TEXT",
    "ALTER TABLE notes DROP COLUMN body",
    "CREATE INDEX by_body ON notes (body)",
    "CREATE VIEW all_notes AS SELECT * FROM notes",
    "CREATE VIEW all_notes AS SELECT * FROM misc, notes",
    "CREATE TEMP VIEW scratch AS SELECT 1",
    "CREATE TEMP TABLE scratch (v TEXT)",
    "CREATE TEMP TABLE scratch AS SELECT * FROM notes",
]


@pytest.mark.parametrize("sql", SCHEMA_CHANGES)
async def test_schema_changes_and_temporary_objects_are_refused(acme: Tenant, sql: str) -> None:
    await acme.refused("alice", sql)
    assert len(await acme.everything()) == 5
    assert await acme.rows("alice", "SELECT count(*) FROM notes") == [[2]]


async def test_dropping_an_index_of_a_governed_table_is_refused(acme: Tenant) -> None:
    await acme.run("root", "CREATE INDEX notes_owner ON notes (owner)")
    assert "tenant admins" in await acme.refused("bob", "DROP INDEX notes_owner")


async def test_views_of_the_tenant_over_a_governed_table_are_refused(acme: Tenant) -> None:
    await acme.run("root", "CREATE VIEW all_notes AS SELECT * FROM notes")  # made before or by an admin
    message = await acme.refused("bob", "SELECT * FROM all_notes")
    assert "all_notes" in message and "views and triggers" in message
    await acme.refused("bob", "SELECT count(*) FROM (SELECT * FROM all_notes)")
    assert await acme.rows("root", "SELECT count(*) FROM all_notes") == [[5]]


async def test_triggers_of_the_tenant_cannot_copy_hidden_rows(acme: Tenant) -> None:
    acme.direct(
        "CREATE TRIGGER copy AFTER INSERT ON misc BEGIN INSERT INTO misc SELECT body FROM notes WHERE NEW.v = 'go'; END"
    )
    assert "copy" in await acme.refused("bob", "INSERT INTO misc VALUES ('go')")
    assert await acme.rows("root", "SELECT count(*) FROM misc") == [[0]]


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TRIGGER notes AFTER INSERT ON misc BEGIN INSERT INTO misc SELECT body FROM notes; END",
        "CREATE VIEW lp_policy_0_update AS SELECT * FROM notes",
        "CREATE TRIGGER lp_policy_0_insert AFTER INSERT ON misc BEGIN INSERT INTO misc SELECT body FROM notes; END",
    ],
)
async def test_objects_named_like_ours_cannot_pass_for_them(acme: Tenant, ddl: str) -> None:
    acme.direct(ddl)
    assert "rename" in await acme.refused("bob", "INSERT INTO misc VALUES ('go')")
    assert "rename" in await acme.refused("bob", "SELECT 1")
    assert await acme.rows("root", "SELECT count(*) FROM misc") == [[0]]


async def test_caller_expressions_never_run_on_hidden_rows(acme: Tenant) -> None:
    # bob's own row 4 is not JSON: json(body) fails on it, which proves the expression runs.
    code, message, _ = await fails(acme.run("bob", "SELECT id FROM notes WHERE json(body) IS NOT NULL"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed JSON" in message
    acme.direct("UPDATE notes SET body = 'not json' WHERE owner = 'alice'")
    acme.direct("UPDATE notes SET body = '{}' WHERE owner = 'bob'")
    await acme.run("root", "CREATE INDEX notes_body ON notes (body)")  # an index that would reorder terms
    for sql in (
        "SELECT id FROM notes WHERE json(body) IS NOT NULL",
        "SELECT id FROM notes WHERE body > '' AND json(body) IS NOT NULL",
        "SELECT count(*) FROM notes WHERE CASE WHEN owner = 'alice' THEN json(body) END",
        "SELECT id FROM notes n JOIN misc ON json(n.body) IS NOT NULL",
        "UPDATE notes SET body = json(body)",
        "UPDATE notes SET body = '[]' WHERE json(body) IS NOT NULL",
        "DELETE FROM notes WHERE json(body) IS NULL",
    ):
        await acme.run("bob", sql)  # no "malformed JSON": alice's rows are never evaluated
    assert await acme.rows("root", "SELECT count(*) FROM notes WHERE owner = 'alice'") == [[2]]


async def test_returning_shows_only_rows_the_statement_may_touch(acme: Tenant) -> None:
    updated = await acme.run("bob", "UPDATE notes SET body = body RETURNING id, owner")
    assert values(updated) == [[3, "bob"], [4, "bob"]]
    deleted = await acme.run("bob", "DELETE FROM notes WHERE id < 100 RETURNING (SELECT count(*) FROM notes)")
    assert deleted.affected_rows == 2
    await acme.refused("bob", "INSERT INTO notes (owner, body) VALUES ('alice', 'x') RETURNING *")


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO notes (id, owner, body) VALUES (1, 'bob', 'mine') ON CONFLICT (id) DO UPDATE SET owner = 'bob'",
        "INSERT INTO notes (id, owner, body) VALUES (1, 'bob', 'x') ON CONFLICT DO UPDATE SET body = json(notes.body)",
        "INSERT INTO notes AS n (id, owner) VALUES (1, 'bob') ON CONFLICT (id) DO UPDATE SET body = n.body WHERE 1",
        "INSERT INTO notes (id, owner) VALUES (1, 'bob') ON CONFLICT (id) DO UPDATE SET body = 'x' WHERE excluded.id = 1",
        "INSERT OR REPLACE INTO notes (id, owner, body) VALUES (1, 'bob', 'replaced')",
        "REPLACE INTO notes (id, owner, body) VALUES (2, 'bob', 'replaced')",
        "UPDATE OR REPLACE notes SET id = 1 WHERE id = 3",
        "INSERT INTO notes (id, owner, body) SELECT 1, 'bob', 'x' WHERE true ON CONFLICT (id) DO UPDATE SET owner = 'bob'",
    ],
)
async def test_upserts_and_replace_never_take_another_users_row(acme: Tenant, sql: str) -> None:
    message = await acme.refused("bob", sql)
    assert "malformed" not in message and "a1" not in message
    assert await acme.everything() == [[i + 1, owner, body] for i, (owner, body) in enumerate(ROWS)]


async def test_upserts_of_own_rows_and_do_nothing_work(acme: Tenant) -> None:
    own = await acme.run(
        "bob",
        "INSERT INTO notes (id, owner, body) VALUES (3, 'bob', 'new') ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )
    assert own.affected_rows == 1
    ignored = await acme.run("bob", "INSERT INTO notes (id, owner) VALUES (1, 'bob') ON CONFLICT DO NOTHING")
    assert ignored.affected_rows == 0
    assert (
        await acme.run("bob", "INSERT OR REPLACE INTO notes (id, owner, body) VALUES (4, 'bob', 'r')")
    ).affected_rows == 1
    assert await acme.rows("root", "SELECT id, body FROM notes WHERE owner = 'bob' ORDER BY id") == [
        [3, "new"],
        [4, "r"],
    ]
    assert await acme.rows("root", "SELECT body FROM notes WHERE id = 1") == [["a1"]]


async def test_update_from_and_point_writes_touch_only_own_rows(acme: Tenant) -> None:
    await acme.run("root", "INSERT INTO misc VALUES ('a1'), ('b1')")
    joined = await acme.run(
        "bob", "UPDATE notes SET body = misc.v || '+' FROM misc WHERE misc.v = notes.body"
    )
    assert joined.affected_rows == 1
    assert (await acme.run("bob", "UPDATE notes SET body = 'x' WHERE id = 1")).affected_rows == 0
    assert (await acme.run("bob", "DELETE FROM notes WHERE id IN (1, 2, 5)")).affected_rows == 0
    assert (await acme.run("bob", "DELETE FROM notes ORDER BY id LIMIT 1")).affected_rows == 1
    assert await acme.everything() == [
        [1, "alice", "a1"],
        [2, "alice", "a2"],
        [4, "bob", "not json"],
        [5, "carol", "c1"],
    ]


async def test_copies_and_joins_hold_only_visible_rows(acme: Tenant) -> None:
    await acme.run("bob", "CREATE TABLE copied AS SELECT * FROM notes")
    assert await acme.rows("root", "SELECT owner FROM copied") == [["bob"], ["bob"]]
    assert (await acme.run("bob", "INSERT INTO misc SELECT body FROM notes")).affected_rows == 2
    assert await acme.rows("bob", "SELECT count(*) FROM notes a JOIN notes b ON a.id = b.id") == [[2]]
    assert await acme.rows("bob", "SELECT count(*) FROM notes a, notes b") == [[4]]
    assert await acme.rows("bob", 'SELECT (SELECT count(*) FROM NOTES), (SELECT count(*) FROM "Notes")') == [
        [2, 2]
    ]
    recursive = "WITH RECURSIVE r(n) AS (SELECT id FROM notes UNION SELECT n + 1 FROM r WHERE n < 5) SELECT count(*) FROM r"
    assert await acme.rows("bob", recursive) == [[3]]  # 3, 4, 5 from bob's ids only


async def test_a_cascade_cannot_delete_another_users_rows(acme: Tenant) -> None:
    await acme.run("root", "CREATE TABLE folders (id INTEGER PRIMARY KEY)")
    await acme.run("root", "INSERT INTO folders VALUES (1), (2)")
    await acme.run(
        "root",
        "CREATE TABLE tagged (id INTEGER PRIMARY KEY, owner TEXT, folder INTEGER REFERENCES folders (id) ON DELETE CASCADE)",
    )
    await acme.run("root", "INSERT INTO tagged VALUES (1, 'alice', 1), (2, 'bob', 2)")
    acme.book.store({**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "tagged"}]})
    assert "cascade" in await acme.refused("bob", "DELETE FROM folders WHERE id = 1")
    assert (await acme.run("bob", "DELETE FROM folders WHERE id = 2")).affected_rows == 1  # its own row only
    assert await acme.rows("root", "SELECT id FROM tagged") == [[1]]


@pytest.mark.parametrize(
    "sql",
    [
        "ATTACH DATABASE ':memory:' AS side",
        "PRAGMA writable_schema = ON",
        "PRAGMA foreign_key_check",
        "SELECT * FROM pragma_foreign_key_check",
        "SELECT * FROM dbstat",
        "SELECT * FROM sqlite_stmt",
    ],
)
async def test_pragmas_attachments_and_statistics_are_refused(acme: Tenant, sql: str) -> None:
    await acme.refused("bob", sql)


async def test_statistics_of_a_governed_tenant_are_not_readable(acme: Tenant) -> None:
    await acme.run("root", "CREATE INDEX notes_owner ON notes (owner)")
    await acme.run("root", "ANALYZE")
    await acme.refused("bob", "SELECT * FROM sqlite_stat1")
    assert "tenant admins" in await acme.refused("bob", "ANALYZE")


async def test_full_text_indexes_of_a_governed_table_are_refused(acme: Tenant) -> None:
    await acme.run(
        "root", "CREATE VIRTUAL TABLE search USING fts5(body, content='notes', content_rowid='id')"
    )
    await acme.run("root", "INSERT INTO search(search) VALUES ('rebuild')")
    assert await acme.rows("root", "SELECT rowid FROM search WHERE search MATCH 'a1'") == [[1]]
    for sql in (
        "SELECT rowid FROM search WHERE search MATCH 'a1'",
        "SELECT * FROM search_data",  # the index itself holds every token
        "INSERT INTO search(search) VALUES ('rebuild')",
    ):
        assert "policies hide" in await acme.refused("bob", sql)
    await acme.run("root", "CREATE VIRTUAL TABLE own USING fts5(body)")  # a copy of its own: not refused
    await acme.run("bob", "INSERT INTO own VALUES ('mine')")
    assert await acme.rows("bob", "SELECT body FROM own WHERE own MATCH 'mine'") == [["mine"]]


async def test_the_schema_table_cannot_be_written(acme: Tenant) -> None:
    code, _, _ = await fails(acme.run("bob", "UPDATE sqlite_master SET sql = 'CREATE TABLE notes (x)'"))
    assert code in (DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    assert await acme.rows("bob", "SELECT count(*) FROM notes") == [[2]]


async def test_explain_shows_plans_not_rows(acme: Tenant) -> None:
    listing = values(await acme.run("bob", "EXPLAIN SELECT * FROM notes"))
    text = repr(listing)
    assert "a1" not in text and "c1" not in text and "alice" not in text
    token = make_token(sub="bob", roles=("developer",))
    plan = await acme.stub.Explain(data_pb2.ExplainRequest(sql="DELETE FROM notes"), metadata=metadata(token))
    assert not plan.read_only and plan.plan
    viewer = make_token(sub="carol", roles=("viewer",))
    read = await acme.stub.Explain(
        data_pb2.ExplainRequest(sql="SELECT * FROM notes"), metadata=metadata(viewer)
    )
    assert read.read_only
    code, _, _ = await fails(
        acme.stub.Explain(data_pb2.ExplainRequest(sql="SELECT * FROM main.notes"), metadata=metadata(token))
    )
    assert code == DENIED
    assert len(await acme.everything()) == 5


async def test_list_tables_shows_the_real_schema_to_governed_callers(acme: Tenant) -> None:
    token = make_token(sub="bob", roles=("developer",))
    response = await acme.stub.ListTables(data_pb2.ListTablesRequest(), metadata=metadata(token))
    notes = next(t for t in response.tables if t.name == "notes")
    assert list(notes.primary_key) == ["id"]


async def test_temporary_objects_of_developers_never_outlive_their_call(acme: Tenant) -> None:
    acme.book.store()  # no policies: developers are not governed, yet their temp objects stay theirs
    await acme.run("bob", "CREATE TEMP TABLE scratch (v TEXT)")
    code, message, _ = await fails(acme.run("root", "SELECT * FROM scratch"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no such table" in message
    await acme.run("root", "CREATE TEMP TABLE kept (v TEXT)")  # admins' connections are theirs to keep


async def test_subject_values_are_literals_not_sql(acme: Tenant) -> None:
    for sub in ("x' OR '1'='1", 'x" OR 1 --', "o'brien"):
        token = make_token(sub=sub, roles=("developer",))
        response = await acme.stub.Query(
            data_pb2.QueryRequest(sql="SELECT count(*) FROM notes"), metadata=metadata(token)
        )
        assert values(response) == [[0]], sub


async def test_subjects_never_see_each_others_setup(acme: Tenant) -> None:
    for who, count in [("alice", 2), ("bob", 2), ("alice", 2), ("carol", 1), ("root", 5), ("bob", 2)] * 2:
        assert await acme.rows(who, "SELECT count(*) FROM notes") == [[count]], who


# --- ApplyPolicies (a compile check on SQLite) ----------------------------------------------------------


async def test_apply_policies_names_the_governed_tables(acme: Tenant) -> None:
    documents = [{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "*"}]}]
    assert await acme.sql.apply_policies("acme", documents, 7) == ["misc", "notes"]
    assert await acme.sql.apply_policies("acme", [OWN_ROWS], 8) == ["notes"]


async def test_apply_policies_refuses_what_cannot_be_compiled(acme: Tenant) -> None:
    nested = {**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "condition": {"record.owner.name": "x"}}]}
    with pytest.raises(InvalidArgument) as err:
        await acme.sql.apply_policies("acme", [nested], 9)
    assert "notes" in err.value.message and "owner" in err.value.message


# --- Units: the authorizer and the rewrite on their own ------------------------------------------------


def test_a_table_governed_after_setup_is_refused_until_set_up() -> None:
    shield = Shield(writable=True)
    shield.policies = compile_set([{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "late*"}]}])
    assert shield.authorize(sqlite3.SQLITE_READ, "late_table", "v", "main", None) == sqlite3.SQLITE_DENY
    assert "retry" in (shield.denial or "")
    assert shield.authorize(sqlite3.SQLITE_READ, "other", "v", "main", None) == sqlite3.SQLITE_OK


def test_rewrites_keep_the_callers_text_and_guard_its_where() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT, body TEXT)")
    shield = Shield(writable=True)
    guard = Guard(compile_set([OWN_ROWS], 1), {"sub": "bob"})
    update = shield.prepare(
        conn, guard, "UPDATE notes SET body = json(body) -- why\nWHERE id = 1 RETURNING id"
    )
    assert update.startswith('UPDATE main."notes" SET body = json(body) -- why\nWHERE CASE WHEN ((((')
    assert update.endswith("THEN (id = 1\n) END RETURNING id") and shield.mode == "fenced"
    flat = shield.prepare(conn, guard, "DELETE FROM notes AS n WHERE id = 1")
    assert flat.startswith('DELETE FROM main."notes" AS n WHERE ((((') and flat.endswith("AND (id = 1\n)")
    assert shield.mode == "flat"
    joined = shield.prepare(conn, guard, "UPDATE notes SET body = v FROM misc")
    assert joined.endswith('WHERE ((main."notes".rowid) IN (SELECT * FROM temp."lp_policy_0_update")) ')
    select = "SELECT 'main.notes', x.notes FROM misc AS x"  # a string and a column: no refusal, no change
    assert shield.prepare(conn, guard, select) == select
    with pytest.raises(PermissionDenied):
        shield.prepare(conn, guard, "SELECT * FROM main/**/.notes")
    assert shield.installs == 1


@pytest.mark.parametrize(
    ("sql", "mode"),
    [
        ("SELECT count(*) FROM notes", "flat"),
        ("SELECT * FROM notes WHERE id = 5 AND owner IN ('a', 'b') ORDER BY lower(body) LIMIT 3", "flat"),
        ("SELECT 1", None),
        ("SELECT json(body) FROM notes", "fenced"),
        ('SELECT "json"(body) FROM notes', "fenced"),
        ("SELECT * FROM notes WHERE body LIKE 'a%'", "fenced"),
        ("SELECT body || 'x' FROM notes", "fenced"),
        ("SELECT * FROM notes WHERE id IN (SELECT id FROM notes)", "fenced"),
        ("WITH x AS (SELECT 1) SELECT * FROM notes", "fenced"),
        ("INSERT INTO notes (owner) VALUES ('bob')", "flat"),
    ],
)
def test_statements_use_flat_views_only_when_no_expression_can_fail(sql: str, mode: str | None) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT, body TEXT)")
    shield = Shield(writable=True)
    shield.prepare(conn, Guard(compile_set([OWN_ROWS], 1), {"sub": "bob"}), "SELECT 1")
    assert statement_mode(tokenize(sql), shield.tables) == mode


def test_tokens_follow_sqlite() -> None:
    kinds = [(t.kind, t.name) for t in tokenize("SELECT [a b], \"c\"\"d\", 'e''f', x'00' /* x */ -- y\n;")]
    assert kinds == [
        ("word", "select"),
        ("quoted", "a b"),
        ("op", None),
        ("quoted", 'c"d'),
        ("op", None),
        ("string", "e'f"),
        ("op", None),
        ("blob", None),
        ("op", None),
    ]
