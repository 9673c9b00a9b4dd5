"""The live dry run on live PostgreSQL: ProbePolicies runs the real enforcement in a rolled-back transaction.

What it answers is checked against what the same user is then served: its SELECT through the data service,
and its UPDATE / DELETE through the data service inside a DO block that raises (so they are rolled back).
A candidate set is evaluated without being stored or applied, and nothing the probe does is left behind.
A private platform database per module (dropped afterwards with the tenants' databases and roles). Skipped
when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg2
import psycopg2.extensions
import pytest
from google.protobuf import json_format, struct_pb2

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core import internal
from services.data.servicer import build
from tests.conftest import LIVE_ENV
from tests.live.test_policies_pg import NOTES, OWN_ROWS, ROWS, Team, own_rows
from tests.services.test_data import fails
from tests.support import PrivateDatabase, need_env, running_service

pytestmark = pytest.mark.live

INVALID = grpc.StatusCode.INVALID_ARGUMENT
SUBJECTS = {
    "alice": {"sub": "alice", "roles": ["developer"]},
    "bob": {"sub": "bob", "roles": ["developer"]},
    "vic": {"sub": "vic", "roles": ["viewer"]},
    "root": {"sub": "root", "roles": ["admin"]},
}


def rule(effect: str, actions: list[str], condition: dict[str, Any] | None = None, resource: str = "notes"):
    return {"effect": effect, "actions": actions, "resource": resource, "condition": condition or {}}


# Rows (id: owner, body): 1 alice "1", 2 alice "2", 3 bob "bob-secret-1", 4 bob "bob-secret-2", 5 bob "x".
# Everyone reads all but row 4; each updates its own rows; anyone deletes rows whose body is "1" or "x".
MIXED = {
    "name": "mixed",
    "rules": [
        rule("allow", ["read"]),
        rule("deny", ["read"], {"record.body": "bob-secret-2"}),
        rule("allow", ["update"], {"record.owner": "$subject.sub"}),
        rule("allow", ["delete"], {"record.body": {"in": ["1", "x"]}}),
    ],
}


@pytest.fixture(scope="module")
def live_db() -> Iterator[PrivateDatabase]:
    db = PrivateDatabase(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_helper_e2")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
async def team(
    live_db: PrivateDatabase, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Team]:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("data", build) as (runtime, channel):
        yield Team(data_pb2_grpc.DataServiceStub(channel), runtime, live_db)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(value, message)
    return message


async def probe(
    team: Team,
    who: str | dict[str, Any],
    *documents: dict[str, Any],
    table: str = "notes",
    limit: int = 0,
    timeout: float | None = None,
) -> data_pb2.ProbePoliciesResponse:
    subject = SUBJECTS[who] if isinstance(who, str) else who
    request = data_pb2.ProbePoliciesRequest(
        tenant=team.tenant,
        policies=[struct(d) for d in documents],
        table=table,
        subject=struct(subject),
        limit=limit,
    )
    secret = internal.internal_secret(team.runtime.settings)
    return await team.stub.ProbePolicies(
        request, metadata=(("x-request-id", "test-probe"), (internal.METADATA_KEY, secret)), timeout=timeout
    )


def ids(response: data_pb2.ProbePoliciesResponse, flag: str) -> set[int]:
    return {int(row.record["id"]) for row in response.rows if getattr(row, flag)}


async def served_reads(team: Team, who: str, table: str = "notes") -> set[int]:
    return {row[0] for row in await team.rows(who, f"SELECT id FROM {table}")}


async def served_writes(team: Team, who: str, statement: str) -> set[int]:
    """The ids `statement` (... RETURNING id) reaches as `who` through the data service, rolled back: a DO
    block runs it and raises with what it returned."""
    do = (
        f"DO $$ DECLARE r text; BEGIN WITH w AS ({statement}) SELECT string_agg(id::text, ',') INTO r FROM w; "
        "RAISE EXCEPTION 'ids=%', coalesce(r, ''); END $$"
    )
    code, message, _ = await fails(team.sql(who, do))
    if who == "vic":  # a viewer's transaction is read-only: its write is refused before any row
        assert code == grpc.StatusCode.PERMISSION_DENIED, message
        return set()
    assert message.startswith("ids="), message
    return {int(i) for i in message.removeprefix("ids=").split(",") if i}


async def agrees(
    team: Team, who: str, response: data_pb2.ProbePoliciesResponse, table: str = "notes"
) -> None:
    assert ids(response, "read") == await served_reads(team, who, table)
    assert ids(response, "update") == await served_writes(
        team, who, f"UPDATE {table} SET id = id RETURNING id"
    )
    assert ids(response, "delete") == await served_writes(team, who, f"DELETE FROM {table} RETURNING id")
    assert all(row.read for row in response.rows)  # only rows the subject can read are answered


def snapshot(team: Team) -> dict[str, Any]:
    """Everything a probe must leave as it was: rows, RLS state and policies, the stored set, bookkeeping."""
    schema = f"t_{team.tenant}"
    return {
        "rows": team.inside(f"SELECT to_jsonb(n) FROM {schema}.notes n ORDER BY ctid"),
        "table": team.inside(
            "SELECT relowner::regrole::text, relrowsecurity, relforcerowsecurity FROM pg_class "
            f"WHERE oid = '{schema}.notes'::regclass"
        ),
        "policies": team.inside(
            "SELECT policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies "
            "WHERE schemaname = %s ORDER BY 1",
            (schema,),
        ),
        "stored": team.inside("SELECT revision, documents, patterns FROM launchpad_private.policy_set"),
        "rendered": team.inside(
            "SELECT rel::regclass::text, digest FROM launchpad_private.rendered ORDER BY 1"
        ),
        "pending": team.inside("SELECT count(*) FROM launchpad_private.pending"),
    }


# --- The probe agrees with what each member is served ----------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "bob", "vic"])
async def test_the_probe_agrees_with_what_each_member_is_served(team: Team, who: str) -> None:
    await team.with_notes(MIXED)
    response = await probe(team, who, MIXED)
    assert response.governed and not response.truncated
    await agrees(team, who, response)
    expected = {
        "alice": ({1, 2, 3, 5}, {1, 2}, {1, 5}),
        "bob": ({1, 2, 3, 5}, {3, 5}, {1, 5}),  # bob's row 4 is hidden from reads: no write reaches it
        "vic": ({1, 2, 3, 5}, set(), set()),  # a viewer never writes, whatever the policy says
    }[who]
    assert (ids(response, "read"), ids(response, "update"), ids(response, "delete")) == expected


async def test_records_are_the_rows_as_stored_in_position_order(team: Team) -> None:
    await team.with_notes()
    response = await probe(team, "bob", OWN_ROWS)
    records = [json_format.MessageToDict(row.record) for row in response.rows]
    assert records == [
        {"id": 3, "owner": "bob", "body": "bob-secret-1"},
        {"id": 4, "owner": "bob", "body": "bob-secret-2"},
        {"id": 5, "owner": "bob", "body": "x"},
    ]
    assert all(row.read and row.update and row.delete for row in response.rows)
    await agrees(team, "bob", response)


async def test_an_admin_is_not_governed_and_may_do_everything(team: Team) -> None:
    await team.with_notes(MIXED)
    response = await probe(team, "root", MIXED)
    assert not response.governed
    assert ids(response, "read") == ids(response, "update") == ids(response, "delete") == {1, 2, 3, 4, 5}
    await agrees(team, "root", response)


async def test_a_table_no_rule_names_is_ungoverned_and_the_role_alone_decides(team: Team) -> None:
    await team.with_notes()
    await team.sql("alice", "CREATE TABLE plain (id int, owner text)")
    await team.sql("alice", "INSERT INTO plain VALUES (1, 'alice'), (2, 'bob')")
    for who, writes in (("bob", {1, 2}), ("vic", set())):
        response = await probe(team, who, OWN_ROWS, table="plain")
        assert not response.governed
        assert (ids(response, "read"), ids(response, "update")) == ({1, 2}, writes)
        await agrees(team, who, response, table="plain")


async def test_a_partitioned_table_is_probed_across_its_partitions(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE notes (id int, owner text, body text) PARTITION BY LIST (owner)")
    await team.sql("alice", "CREATE TABLE notes_a PARTITION OF notes FOR VALUES IN ('alice')")
    await team.sql("alice", "CREATE TABLE notes_b PARTITION OF notes FOR VALUES IN ('bob')")
    assert await team.apply(own_rows("notes*")) == ["notes", "notes_a", "notes_b"]
    await team.sql("root", "INSERT INTO notes VALUES (1, 'alice', 'a'), (2, 'bob', 'b'), (3, 'alice', 'c')")
    response = await probe(team, "alice", own_rows("notes*"))
    assert ids(response, "read") == ids(response, "update") == ids(response, "delete") == {1, 3}
    await agrees(team, "alice", response)


# --- A candidate is evaluated, never stored or applied ----------------------------------------------------


async def test_a_candidate_set_is_evaluated_without_being_stored_or_applied(team: Team) -> None:
    await team.with_notes()  # stored and applied: own-rows
    before = snapshot(team)
    response = await probe(team, "alice", MIXED)  # the candidate replaces own-rows for the probe only
    assert (ids(response, "read"), ids(response, "update"), ids(response, "delete")) == (
        {1, 2, 3, 5},
        {1, 2},
        {1, 5},
    )
    assert snapshot(team) == before
    assert await served_reads(team, "alice") == {1, 2}  # still own-rows
    # A candidate without a rule for the table: ungoverned for the probe, still governed afterwards.
    ungoverned = await probe(
        team, "alice", {"name": "other", "rules": [rule("allow", ["read"], resource="x")]}
    )
    assert not ungoverned.governed and ids(ungoverned, "delete") == {1, 2, 3, 4, 5}
    assert snapshot(team) == before
    assert await served_reads(team, "bob") == {3, 4, 5}


async def test_a_candidate_governing_an_ungoverned_table_leaves_it_ungoverned(team: Team) -> None:
    await team.sql("alice", NOTES)
    for owner, body in ROWS:
        await team.sql("alice", f"INSERT INTO notes (owner, body) VALUES ('{owner}', '{body}')")
    before = snapshot(team)
    response = await probe(team, "bob", OWN_ROWS)
    assert response.governed and ids(response, "read") == {3, 4, 5}
    assert snapshot(team) == before and before["policies"] == [] and before["stored"] == []
    assert await served_reads(team, "alice") == {1, 2, 3, 4, 5}
    assert team.inside(
        f"SELECT count(*) FROM pg_policy WHERE polrelid = 't_{team.tenant}.notes'::regclass"
    ) == [(0,)]


# --- Nothing is written -----------------------------------------------------------------------------------


async def test_nothing_is_written_not_even_by_a_trigger_and_only_its_sequence_moves(team: Team) -> None:
    await team.with_notes()
    # An admin's audit trigger (a developer's could not be on a governed table) writing a row per change.
    await team.sql("root", "CREATE TABLE audit (n serial, op text, row_id int)")
    await team.sql(
        "root",
        "CREATE FUNCTION audited() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO audit (op, row_id) VALUES (TG_OP, OLD.id); RETURN coalesce(NEW, OLD); END $$",
    )
    await team.sql(
        "root",
        "CREATE TRIGGER audited AFTER UPDATE OR DELETE ON notes FOR EACH ROW EXECUTE FUNCTION audited()",
    )
    sequence = f"SELECT last_value, is_called FROM t_{team.tenant}.audit_n_seq"
    before, sequence_before = snapshot(team), team.inside(sequence)
    response = await probe(team, "alice", OWN_ROWS)
    assert ids(response, "update") == ids(response, "delete") == {1, 2}
    assert snapshot(team) == before
    assert team.inside(f"SELECT count(*) FROM t_{team.tenant}.audit") == [(0,)]
    # The trigger did run (2 updates, 2 deletes), inside the transaction that was rolled back; sequences are
    # not transactional, so its nextval() calls are the one trace the probe leaves.
    assert sequence_before == [(1, False)] and team.inside(sequence) == [(4, True)]


async def test_a_row_a_trigger_refuses_to_delete_is_not_deletable(team: Team) -> None:
    await team.with_notes()
    await team.sql(
        "root",
        "CREATE FUNCTION keep_x() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF OLD.body = 'x' THEN RAISE EXCEPTION 'x stays'; END IF; RETURN OLD; END $$",
    )
    await team.sql(
        "root", "CREATE TRIGGER keep_x BEFORE DELETE ON notes FOR EACH ROW EXECUTE FUNCTION keep_x()"
    )
    response = await probe(team, "bob", OWN_ROWS)
    assert ids(response, "read") == ids(response, "update") == {3, 4, 5}
    assert ids(response, "delete") == {3, 4}
    code, message, _ = await fails(team.sql("bob", "DELETE FROM notes WHERE id = 5"))  # as bob is served
    assert code == INVALID and "x stays" in message
    assert await served_writes(team, "bob", "DELETE FROM notes WHERE id <> 5 RETURNING id") == {3, 4}


# --- Tables of every shape --------------------------------------------------------------------------------


async def test_a_table_without_columns_is_probed_through_row_locks(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE bare ()")
    await team.sql("alice", "INSERT INTO bare DEFAULT VALUES")
    await team.sql("alice", "INSERT INTO bare DEFAULT VALUES")
    everything = {"name": "all", "rules": [rule("allow", ["read", "write"], resource="bare")]}
    only_read = {"name": "read", "rules": [rule("allow", ["read"], resource="bare")]}
    assert await team.apply(everything) == ["bare"]
    response = await probe(team, "alice", everything, table="bare")
    assert [json_format.MessageToDict(row.record) for row in response.rows] == [{}, {}]
    assert all(row.read and row.update and row.delete for row in response.rows)
    response = await probe(team, "alice", only_read, table="bare")
    assert len(response.rows) == 2 and not any(row.update or row.delete for row in response.rows)


async def test_generated_and_identity_columns_are_never_assigned(team: Team) -> None:
    await team.sql(
        "alice",
        "CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY, n int GENERATED ALWAYS AS (id * 2) STORED,"
        " owner text, body text)",
    )
    await team.sql("alice", "INSERT INTO notes (owner, body) VALUES ('alice', 'a'), ('bob', 'b')")
    assert await team.apply(OWN_ROWS) == ["notes"]
    response = await probe(team, "alice", OWN_ROWS)
    assert [json_format.MessageToDict(row.record) for row in response.rows] == [
        {"id": 1, "n": 2, "owner": "alice", "body": "a"}
    ]
    assert response.rows[0].update and response.rows[0].delete
    assert ids(response, "update") == await served_writes(
        team, "alice", "UPDATE notes SET owner = owner RETURNING id"
    )


async def test_columns_of_any_type_take_their_own_value(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE things (p point, j json, x xml, owner text)")
    await team.sql("alice", "INSERT INTO things VALUES (point(1, 2), '{\"a\": 1}', '<a/>', 'alice')")
    policy = own_rows("things")
    assert await team.apply(policy) == ["things"]
    response = await probe(team, "alice", policy, table="things")
    assert len(response.rows) == 1 and response.rows[0].update and response.rows[0].delete
    assert json_format.MessageToDict(response.rows[0].record)["j"] == {"a": 1}


# --- Limits -----------------------------------------------------------------------------------------------


async def test_limit_takes_the_first_rows_by_position_and_says_truncated(team: Team) -> None:
    await team.with_notes()
    response = await probe(team, "root", OWN_ROWS, limit=2)
    assert ids(response, "read") == {1, 2} and response.truncated
    response = await probe(team, "bob", OWN_ROWS, limit=3)
    assert ids(response, "read") == {3, 4, 5} and not response.truncated  # only readable rows count
    response = await probe(team, "root", OWN_ROWS, limit=5000)  # at most 1000: no error
    assert len(response.rows) == 5 and not response.truncated
    await team.sql("root", "INSERT INTO notes (owner, body) SELECT 'bob', 'n' FROM generate_series(1, 150)")
    response = await probe(team, "bob", OWN_ROWS)  # 0: 100 rows
    assert len(response.rows) == 100 and response.truncated
    code, _, details = await fails(probe(team, "bob", OWN_ROWS, limit=-1))
    assert code == INVALID and details.get("field") == "limit"


# --- Bad input ----------------------------------------------------------------------------------------------


async def test_an_unknown_table_or_a_view_is_a_400_naming_it(team: Team) -> None:
    await team.with_notes()
    code, message, details = await fails(probe(team, "alice", OWN_ROWS, table="nope"))
    assert code == INVALID and '"nope"' in message and details.get("field") == "table"
    await team.sql("alice", "CREATE VIEW notes_view WITH (security_invoker) AS SELECT * FROM notes")
    code, message, _ = await fails(probe(team, "alice", OWN_ROWS, table="notes_view"))
    assert code == INVALID and "not a table" in message
    code, _, _ = await fails(probe(team, "alice", OWN_ROWS, table=""))
    assert code == INVALID


async def test_an_invalid_policy_is_a_400_naming_the_part_and_nothing_changes(team: Team) -> None:
    await team.with_notes()
    before = snapshot(team)
    bad = {"name": "bad", "rules": [{"effect": "perhaps", "actions": ["read"], "resource": "notes"}]}
    code, message, _ = await fails(probe(team, "alice", bad))
    assert code == INVALID and "rules[0]" in message and "effect" in message, message
    nested = {"name": "nested", "rules": [rule("allow", ["read"], {"record.body.x": "y"})]}
    code, message, details = await fails(probe(team, "alice", nested))
    assert code == INVALID and (details.get("table"), details.get("column")) == ("notes", "body"), message
    assert snapshot(team) == before


async def test_a_subject_is_what_a_real_call_carries(team: Team) -> None:
    await team.with_notes()
    for subject, field in (
        ({"sub": "alice", "roles": ["developer"], "team": "a"}, "subject.team"),
        ({"roles": ["developer"]}, "subject.sub"),
        ({"sub": "alice", "roles": "developer"}, "subject.roles"),
        ({"sub": "alice", "roles": ["developer"], "tenant": "other"}, "subject.tenant"),
    ):
        code, message, details = await fails(probe(team, subject, OWN_ROWS))
        assert code == INVALID and details.get("field") == field, message
    response = await probe(team, {"sub": "alice", "roles": ["developer"], "tenant": team.tenant}, OWN_ROWS)
    assert ids(response, "read") == {1, 2}


async def test_only_internal_callers_may_probe(team: Team) -> None:
    await team.with_notes()
    request = data_pb2.ProbePoliciesRequest(
        tenant=team.tenant, policies=[struct(OWN_ROWS)], table="notes", subject=struct(SUBJECTS["root"])
    )
    code, _, _ = await fails(team.stub.ProbePolicies(request, metadata=team.tokens["root"]))
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


# --- Locks: never stuck behind running queries -----------------------------------------------------------


def hold(team: Team, sql: str) -> psycopg2.extensions.connection:
    """An open transaction of the server's superuser in the tenant database, having run `sql`."""
    dsn = psycopg2.extensions.make_dsn(team.db.server, dbname=team.names.tenant_database)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute(sql)
    return conn


async def test_a_probe_does_not_wait_long_behind_a_lock_and_says_retry(team: Team) -> None:
    await team.with_notes()
    schema = f"t_{team.tenant}"
    holder = hold(team, f"LOCK TABLE {schema}.notes IN ACCESS EXCLUSIVE MODE")
    try:
        started = time.monotonic()
        code, message, _ = await fails(probe(team, "alice", OWN_ROWS))
        assert code == grpc.StatusCode.ABORTED and "retry" in message
        assert time.monotonic() - started < 4
    finally:
        holder.close()
    # A running reader: probing the applied set takes no stronger lock than it, so it runs; a candidate that
    # changes the table's policies needs the table alone, and says to retry instead of waiting.
    reader = hold(team, f"SELECT count(*) FROM {schema}.notes")
    try:
        assert ids(await probe(team, "alice", OWN_ROWS), "read") == {1, 2}
        code, message, _ = await fails(probe(team, "alice", MIXED))
        assert code == grpc.StatusCode.ABORTED and "retry" in message
    finally:
        reader.close()
    assert ids(await probe(team, "alice", MIXED), "read") == {1, 2, 3, 5}


async def test_a_running_apply_makes_the_probe_say_retry_instead_of_waiting(team: Team) -> None:
    await team.with_notes()
    sync = hold(team, "LOCK TABLE launchpad_private.rendered IN EXCLUSIVE MODE")  # what apply() holds first
    try:
        code, message, _ = await fails(probe(team, "alice", OWN_ROWS))
        assert code == grpc.StatusCode.ABORTED and "retry" in message
    finally:
        sync.close()
    assert await team.apply(MIXED, revision=2) == ["notes"]  # and the probes held nothing afterwards
    assert ids(await probe(team, "alice", MIXED), "read") == {1, 2, 3, 5}


async def test_a_probe_that_runs_too_long_is_cancelled_and_leaves_nothing(team: Team) -> None:
    await team.with_notes()
    await team.sql(
        "root",
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM pg_sleep(5); RETURN NEW; END $$",
    )
    await team.sql("root", "CREATE TRIGGER slow BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION slow()")
    before = snapshot(team)
    started = time.monotonic()
    code, _, _ = await fails(probe(team, "alice", OWN_ROWS, timeout=1.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert snapshot(team) == before
    # The statement was cancelled by its timeout, not tried row by row: the table is free again at once.
    assert await team.apply(MIXED, revision=2) == ["notes"]
    assert time.monotonic() - started < 4


async def test_code_the_probe_sets_off_cannot_leave_the_subjects_role(team: Team) -> None:
    """The probe's session is the platform's superuser: a developer's trigger that tries to RESET ROLE (and
    then act as superuser) must fail, leaving only a row the probe reports as not updatable."""
    await team.sql("alice", "CREATE TABLE trap (id int PRIMARY KEY, v text)")
    await team.sql("alice", "INSERT INTO trap VALUES (1, 'x')")
    await team.sql(
        "alice",
        "CREATE FUNCTION escape() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RESET ROLE; CREATE ROLE lp_probe_pwned SUPERUSER; RETURN NEW; END $$",
    )
    await team.sql(
        "alice", "CREATE TRIGGER escape BEFORE UPDATE ON trap FOR EACH ROW EXECUTE FUNCTION escape()"
    )
    answer = await probe(team, "alice", table="trap")
    assert [(row.read, row.update, row.delete) for row in answer.rows] == [(True, False, True)]
    assert team.inside("SELECT count(*) FROM pg_roles WHERE rolname = 'lp_probe_pwned'") == [(0,)]
