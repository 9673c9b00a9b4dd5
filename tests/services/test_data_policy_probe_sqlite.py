"""The live dry run on SQLite (sqlite_probe): what a subject may do with each row, found by doing it.

The probe must agree with what the same subject is then served by real queries through the data service
(read: its SELECT; update / delete: the rows its UPDATE / DELETE affects, undone afterwards), whatever the
policy set; a candidate set is evaluated without being stored and leaves the connection pool as it was;
nothing is written. Uses the `acme` tenant of test_data_policies_sqlite (alice and bob develop, carol views,
root is the admin; an `own-rows` policy is stored).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core import internal
from services.core.errors import Aborted, InvalidArgument
from services.data.model import Limits, Probe
from services.data.servicer import build
from tests.services import test_data_policies_sqlite as base
from tests.services.test_data_policies_sqlite import OWN_ROWS, ROLES, ROWS, Book, Tenant, _backend
from tests.support import running_service

acme = base.acme  # the fixture: alice, bob (developers), carol (viewer), root (admin); own-rows stored
LIMITS = Limits(timeout_ms=5000, max_rows=1000, max_bytes=8 * 1024 * 1024)
SUBJECTS = ("alice", "bob", "carol")


def subject(who: str) -> dict[str, Any]:
    return {"sub": who, "tenant": "acme", "roles": [ROLES[who]]}


async def probe(
    acme: Tenant,
    who: str,
    documents: Sequence[Mapping[str, Any]] = (OWN_ROWS,),
    table: str = "notes",
    limit: int = 0,
) -> Probe:
    return await acme.sql.probe_policies("acme", list(documents), table, subject(who), limit or 100, LIMITS)


def flags(result: Probe, key: str = "id") -> dict[Any, tuple[bool, bool, bool]]:
    return {row.record[key]: (row.read, row.update, row.delete) for row in result.rows}


def rule(
    effect: str, actions: list[str], condition: dict[str, Any], resource: str = "notes"
) -> dict[str, Any]:
    return {"effect": effect, "actions": actions, "resource": resource, "condition": condition}


# A set whose read, update and delete differ, with a deny that wins and one that cannot be evaluated.
MIXED = [
    {
        "name": "mixed",
        "rules": [
            rule("allow", ["read"], {"record.owner": "$subject.sub"}),
            rule("allow", ["read"], {"record.body": {"in": ["b1", "c1"]}}),
            rule("allow", ["update"], {"record.owner": {"ne": "carol"}}),
            rule("deny", ["update"], {"record.body": "a2"}),
            rule("allow", ["delete"], {"record.id": {"gte": 2}}),
            rule("deny", ["delete"], {"record.missing": 1}),  # cannot be evaluated: denies nothing
        ],
    }
]
EVERYTHING = [{"name": "all", "rules": [rule("allow", ["read", "write"], {}, resource="*")]}]


async def served(
    acme: Tenant, who: str, table: str = "notes", key: str = "id"
) -> dict[Any, tuple[bool, bool, bool]]:
    """What real queries of `who` read, update and delete (the deleted rows are put back as they were)."""
    read = {row[0] for row in await acme.rows(who, f"SELECT {key} FROM {table}")}
    if ROLES[who] == "viewer":
        return {k: (k in read, False, False) for k in await _keys(acme, table, key)}
    before = await acme.rows("root", f"SELECT * FROM {table} ORDER BY {key}")
    updated = {row[0] for row in await acme.rows(who, f"UPDATE {table} SET body = body RETURNING {key}")}
    deleted = {row[0] for row in await acme.rows(who, f"DELETE FROM {table} RETURNING {key}")}
    for row in before:
        if row[0] in deleted:
            marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
            await acme.run("root", f"INSERT INTO {table} VALUES ({marks})", *map(_cell, row))
    assert await acme.rows("root", f"SELECT * FROM {table} ORDER BY {key}") == before
    return {k: (k in read, k in updated, k in deleted) for k in await _keys(acme, table, key)}


async def _keys(acme: Tenant, table: str, key: str) -> list[Any]:
    return [row[0] for row in await acme.rows("root", f"SELECT {key} FROM {table} ORDER BY rowid")]


def _cell(value: Any) -> data_pb2.Cell:
    if value is None:
        return data_pb2.Cell(null=0)
    return data_pb2.Cell(int=value) if isinstance(value, int) else data_pb2.Cell(text=value)


def fingerprint(file: Path) -> list[str]:
    """The database file and its write-ahead log, byte for byte."""
    log = file.with_name(file.name + "-wal")
    return [hashlib.sha256(f.read_bytes() if f.exists() else b"").hexdigest() for f in (file, log)]


# --- The probe is what enforcement does -----------------------------------------------------------------


@pytest.mark.parametrize(
    "documents", [[OWN_ROWS], MIXED, EVERYTHING, []], ids=["own", "mixed", "all", "none"]
)
async def test_the_probe_agrees_with_what_each_subject_is_served(
    acme: Tenant, documents: list[dict[str, Any]]
) -> None:
    acme.book.store(*documents)
    for who in SUBJECTS:
        probed = await probe(acme, who, documents)
        assert flags(probed) == await served(acme, who), who
        assert probed.governed == bool(documents) and not probed.truncated
        assert [row.record for row in probed.rows] == [
            {"id": i + 1, "owner": owner, "body": body} for i, (owner, body) in enumerate(ROWS)
        ]


async def test_mixed_rules_give_each_action_its_own_rows(acme: Tenant) -> None:
    assert flags(await probe(acme, "alice", MIXED)) == {
        1: (True, True, False),  # read and update its own; delete needs id >= 2
        2: (True, False, True),  # the deny on body a2 wins for update
        3: (True, True, True),  # body b1 is readable by anyone
        4: (False, False, False),  # bob's: an UPDATE or DELETE reaches only rows it can read
        5: (True, False, True),  # c1 readable; carol's rows are not updatable
    }


async def test_tables_without_rowid_and_without_a_key_column_are_probed(acme: Tenant) -> None:
    await acme.run(
        "root", "CREATE TABLE kv (k TEXT, n INTEGER, owner TEXT, body TEXT, PRIMARY KEY (k, n)) WITHOUT ROWID"
    )
    await acme.run(
        "root", "INSERT INTO kv VALUES ('b', 1, 'alice', 'x'), ('a', 2, 'bob', 'y'), ('a', 1, 'bob', 'z')"
    )
    await acme.run("root", "CREATE TABLE bag (owner TEXT, body TEXT)")  # a rowid no column shows
    await acme.run(
        "root", "INSERT INTO bag VALUES ('bob', 'same'), ('alice', 'same'), ('bob', 'same'), (NULL, 1)"
    )
    documents = [{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "*"}]}]
    acme.book.store(*documents)
    for who in ("alice", "bob"):
        kv = await probe(acme, who, documents, "kv")
        assert [(r.record["k"], r.record["n"]) for r in kv.rows] == [("a", 1), ("a", 2), ("b", 1)]  # by key
        assert {r.record["body"]: (r.read, r.update, r.delete) for r in kv.rows} == {
            body: (mine, mine, mine)
            for body, mine in [("x", who == "alice"), ("y", who == "bob"), ("z", who == "bob")]
        }
        bag = await probe(acme, who, documents, "bag")
        assert [(r.record["owner"], r.read, r.update, r.delete) for r in bag.rows] == [
            (owner, owner == who, owner == who, owner == who) for owner in ("bob", "alice", "bob", None)
        ]
    read = await acme.rows("bob", "SELECT owner, body FROM bag")
    assert read == [["bob", "same"], ["bob", "same"]]


async def test_virtual_tables_are_tried_row_by_row_and_refused_when_governed(acme: Tenant) -> None:
    await acme.run("root", "CREATE VIRTUAL TABLE docs USING fts5(owner, body)")
    await acme.run("root", "INSERT INTO docs VALUES ('bob', 'x'), ('alice', 'y')")
    plain = await probe(acme, "bob", [OWN_ROWS], "docs")  # no RETURNING on virtual tables: one by one
    assert not plain.governed and [r.record for r in plain.rows] == [
        {"owner": "bob", "body": "x"},
        {"owner": "alice", "body": "y"},
    ]
    assert [(r.read, r.update, r.delete) for r in plain.rows] == [(True, True, True)] * 2
    documents = [{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "docs"}]}]
    governed = await probe(acme, "bob", documents, "docs")  # cannot be filtered: every statement refused
    assert governed.governed and [(r.read, r.update, r.delete) for r in governed.rows] == [(False,) * 3] * 2
    acme.book.store(*documents)
    await acme.refused("bob", "SELECT * FROM docs")
    await acme.refused("bob", "DELETE FROM docs")


async def test_records_are_the_json_view_of_the_row(acme: Tenant) -> None:
    await acme.run("root", "CREATE TABLE flags (id INTEGER PRIMARY KEY, on_ BOOLEAN, n REAL, b BLOB, x)")
    await acme.run("root", "INSERT INTO flags VALUES (1, 1, 1.5, x'00ff', '1'), (2, 0, NULL, NULL, 1)")
    result = await probe(acme, "root", [], "flags")
    assert [row.record for row in result.rows] == [
        {"id": 1, "on_": True, "n": 1.5, "b": b"\x00\xff", "x": "1"},
        {"id": 2, "on_": False, "n": None, "b": None, "x": 1},
    ]


# --- Candidates, the pool and what is left behind -------------------------------------------------------


async def test_a_candidate_is_evaluated_without_being_stored_and_the_pool_is_untouched(acme: Tenant) -> None:
    assert await acme.rows("alice", "SELECT id FROM notes ORDER BY id") == [[1], [2]]  # pools a connection
    pool = acme.sql._tenants["acme"].idle
    before = {role: list(conns) for role, conns in pool.items()}
    shields = [
        (c.shield, c.shield.key, c.shield.installs) for conns in pool.values() for c in conns if c.shield
    ]
    candidate = await probe(acme, "alice", EVERYTHING)
    assert all(row.read and row.update and row.delete for row in candidate.rows)
    assert {role: list(conns) for role, conns in pool.items()} == before  # no connection joined or left
    assert [(s, s.key, s.installs) for s, _, _ in shields] == shields  # nor was one set up anew
    assert await acme.rows("alice", "SELECT id FROM notes ORDER BY id") == [[1], [2]]
    assert (await acme.run("alice", "UPDATE notes SET body = body")).affected_rows == 2
    for conns in pool.values():
        for conn in conns:
            objects = conn.conn.execute("SELECT name FROM temp.sqlite_master").fetchall()
            assert all(name.startswith("lp_policy_") or name == "notes" for (name,) in objects)
    assert acme.book.policies.revision == 1  # nothing stored


async def test_nothing_is_written_not_even_by_triggers_and_cascades(acme: Tenant) -> None:
    await acme.run("root", "CREATE TABLE log (what TEXT)")
    await acme.run("root", "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT, body TEXT)")
    await acme.run("root", "INSERT INTO items (owner, body) VALUES ('alice', 'i1'), ('bob', 'i2')")
    acme.direct("CREATE TRIGGER logged AFTER DELETE ON items BEGIN INSERT INTO log VALUES (old.body); END")
    acme.direct("CREATE TRIGGER logged_u AFTER UPDATE ON items BEGIN INSERT INTO log VALUES ('u'); END")
    acme.direct("PRAGMA wal_checkpoint(TRUNCATE)")  # the log empty: a write of the probe would show there
    contents = {
        t: await acme.rows("root", f"SELECT * FROM {t}") for t in ("notes", "items", "log", "sqlite_sequence")
    }
    file = fingerprint(acme.file)
    result = await probe(acme, "bob", [OWN_ROWS], "items")  # items is not governed: the triggers run
    assert not result.governed and all(flags(result)[k] == (True, True, True) for k in (1, 2))
    for who in SUBJECTS:
        await probe(acme, who, MIXED)
    assert {t: await acme.rows("root", f"SELECT * FROM {t}") for t in contents} == contents
    assert fingerprint(acme.file) == file


async def test_a_trigger_that_rolls_back_stops_the_probe_and_nothing_is_kept(acme: Tenant) -> None:
    await acme.run("root", "CREATE TABLE items (id INTEGER PRIMARY KEY, owner TEXT, body TEXT)")
    await acme.run("root", "INSERT INTO items (owner, body) VALUES ('bob', 'i1')")
    acme.direct("CREATE TRIGGER no BEFORE DELETE ON items BEGIN SELECT RAISE(ROLLBACK, 'never'); END")
    with pytest.raises(Aborted) as err:
        await probe(acme, "bob", [OWN_ROWS], "items")
    assert "RAISE(ROLLBACK)" in err.value.message
    assert await acme.rows("root", "SELECT id, owner, body FROM items") == [[1, "bob", "i1"]]


async def test_a_cascade_the_subject_may_not_make_leaves_only_that_row(acme: Tenant) -> None:
    await acme.run("root", "CREATE TABLE lists (id INTEGER PRIMARY KEY, owner TEXT, body TEXT)")
    await acme.run("root", "INSERT INTO lists VALUES (1, 'bob', 'l1'), (2, 'bob', 'l2')")
    await acme.run(
        "root",
        "CREATE TABLE notes2 (id INTEGER PRIMARY KEY, owner TEXT, list INTEGER REFERENCES lists ON DELETE CASCADE)",
    )
    await acme.run("root", "INSERT INTO notes2 VALUES (1, 'alice', 1), (2, 'bob', 2)")
    documents = [{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": "notes2"}]}]
    acme.book.store(*documents)
    result = await probe(acme, "bob", documents, "lists")
    assert flags(result) == {1: (True, True, False), 2: (True, True, True)}  # list 1 holds alice's note
    await acme.refused("bob", "DELETE FROM lists WHERE id = 1")  # as a real delete of it
    assert (await acme.run("bob", "DELETE FROM lists WHERE id = 2")).affected_rows == 1


# --- Roles ----------------------------------------------------------------------------------------------


async def test_a_viewer_reads_as_the_policies_say_and_never_writes(acme: Tenant) -> None:
    result = await probe(acme, "carol", EVERYTHING)
    assert result.governed and all(row.read and not row.update and not row.delete for row in result.rows)
    assert flags(await probe(acme, "carol")) == {i: (i == 5, False, False) for i in range(1, 6)}


async def test_an_admin_subject_is_not_governed(acme: Tenant) -> None:
    result = await probe(acme, "root", [{"name": "none", "rules": [rule("deny", ["read", "write"], {})]}])
    assert not result.governed and len(result.rows) == 5
    assert all(row.read and row.update and row.delete for row in result.rows)


# --- Limits and bad input -------------------------------------------------------------------------------


async def test_the_limit_takes_the_first_rows_by_row_id(acme: Tenant) -> None:
    two = await probe(acme, "bob", limit=2)
    assert [row.record["id"] for row in two.rows] == [1, 2] and two.truncated
    assert flags(two) == {1: (False, False, False), 2: (False, False, False)}
    five = await probe(acme, "bob", limit=5)
    assert len(five.rows) == 5 and not five.truncated
    many = await acme.sql.probe_policies("acme", [OWN_ROWS], "notes", subject("bob"), 5000, LIMITS)
    assert len(many.rows) == 5  # at most 1000, whatever is asked


async def test_a_policy_naming_a_missing_column_denies_without_error(acme: Tenant) -> None:
    documents = [
        {"name": "by-author", "rules": [rule("allow", ["read", "write"], {"record.author": "$subject.sub"})]}
    ]
    result = await probe(acme, "bob", documents)
    assert result.governed and flags(result) == {i: (False, False, False) for i in range(1, 6)}


async def test_unknown_tables_views_and_invalid_policies_are_refused(acme: Tenant) -> None:
    await acme.run("root", "CREATE VIEW shown AS SELECT * FROM notes")
    for table, words in [
        ("nope", 'table "nope" does not exist'),
        ("shown", "is a view"),
        ("", "name the table"),
    ]:
        with pytest.raises(InvalidArgument) as err:
            await probe(acme, "bob", table=table)
        assert words in err.value.message
    with pytest.raises(InvalidArgument) as err:
        await probe(
            acme,
            "bob",
            [{"name": "bad", "rules": [{"effect": "maybe", "actions": ["read"], "resource": "notes"}]}],
        )
    assert "effect" in err.value.message
    nested = [{**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "condition": {"record.owner.name": "x"}}]}]
    with pytest.raises(InvalidArgument) as err:
        await probe(acme, "bob", nested)
    assert "notes" in err.value.message and "owner" in err.value.message


# --- Through the RPC ------------------------------------------------------------------------------------


async def test_probe_policies_through_the_rpc(settings_env: Path) -> None:
    async with running_service("data", build) as (runtime, channel):
        sql = _backend(runtime)
        book = Book()
        sql._book = book  # type: ignore[assignment]
        stub = data_pb2_grpc.DataServiceStub(channel)
        tenant = Tenant(stub, sql, book, settings_env / "tenants" / "acme.sqlite")
        await tenant.run("root", "CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT, done BOOLEAN)")
        await tenant.run("root", "INSERT INTO notes (owner, done) VALUES ('alice', 1), ('bob', 0)")
        request = data_pb2.ProbePoliciesRequest(tenant="acme", table="notes", limit=1)
        request.policies.add().update(OWN_ROWS)
        request.subject.update({"sub": "bob", "roles": ["developer"]})
        trusted = (
            ("x-request-id", "probe-test"),
            (internal.METADATA_KEY, internal.internal_secret(runtime.settings)),
        )
        response = await stub.ProbePolicies(request, metadata=trusted)
        assert response.governed and response.truncated and len(response.rows) == 1
        row = response.rows[0]
        assert json_format.MessageToDict(row.record) == {"id": 1, "owner": "alice", "done": True}
        assert (row.read, row.update, row.delete) == (False, False, False)
        request.limit = 0
        response = await stub.ProbePolicies(request, metadata=trusted)
        assert [(r.read, r.update, r.delete) for r in response.rows] == [(False,) * 3, (True,) * 3]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ProbePolicies(request, metadata=trusted[:1])
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
