"""Policies on live PostgreSQL: row-level security through the data service, and every known way around it.

One tenant per test with two developers (alice, bob), a viewer (vic) and an admin (root); the `own-rows`
policy lets each read and write only the rows whose `owner` is its `sub`. Each bypass is a test that tries it
and asserts it fails. A private platform database per module, dropped afterwards with the tenants' databases
and roles. Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

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
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.auth.store import AuthStore, PolicyRecord
from services.core import internal
from services.core.config import load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.data import pg_rls
from services.data.backend import tenant_secret
from services.data.pg_provision import TenantNames, role_password
from services.data.servicer import build
from tests.conftest import LIVE_ENV
from tests.services.test_data import fails, values
from tests.support import PrivateDatabase, make_token, metadata, need_env, pg_admin, running_service

pytestmark = pytest.mark.live

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
NOTES = "CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL, body text)"
ROWS = [("alice", "1"), ("alice", "2"), ("bob", "bob-secret-1"), ("bob", "bob-secret-2"), ("bob", "x")]
DENIED = grpc.StatusCode.PERMISSION_DENIED


def own_rows(resource: str = "notes") -> dict[str, Any]:
    return {**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "resource": resource}]}


@pytest.fixture(scope="module")
def live_db() -> Iterator[PrivateDatabase]:
    db = PrivateDatabase(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_rls_test")
    try:
        yield db
    finally:
        db.drop()


class Team:
    """One tenant of the live service: its members' tokens, ApplyPolicies, and a superuser's look inside."""

    def __init__(self, stub: data_pb2_grpc.DataServiceStub, runtime: Any, db: PrivateDatabase) -> None:
        self.stub, self.runtime, self.db = stub, runtime, db
        self.tenant = f"lt{uuid.uuid4().hex[:10]}"
        self.names = TenantNames(self.tenant, db.name)
        self.tokens = {
            who: metadata(make_token(sub=who, tenant=self.tenant, roles=(role,)))
            for who, role in (
                ("alice", "developer"),
                ("bob", "developer"),
                ("vic", "viewer"),
                ("root", "admin"),
            )
        }

    async def sql(self, who: str, sql: str, *params: data_pb2.Cell) -> data_pb2.QueryResponse:
        return await self.stub.Query(data_pb2.QueryRequest(sql=sql, params=params), metadata=self.tokens[who])

    async def rows(self, who: str, sql: str) -> list[list[Any]]:
        return values(await self.sql(who, sql))

    async def apply(self, *documents: dict[str, Any], revision: int = 1) -> list[str]:
        policies = []
        for document in documents:
            message = struct_pb2.Struct()
            json_format.ParseDict(document, message)
            policies.append(message)
        request = data_pb2.ApplyPoliciesRequest(tenant=self.tenant, policies=policies, revision=revision)
        secret = internal.internal_secret(self.runtime.settings)
        response = await self.stub.ApplyPolicies(
            request, metadata=(("x-request-id", "test-apply"), (internal.METADATA_KEY, secret))
        )
        return list(response.governed_tables)

    def inside(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A statement in the tenant's database as the server's superuser (to look, not to act as a tenant)."""
        dsn = psycopg2.extensions.make_dsn(self.db.server, dbname=self.names.tenant_database)
        return pg_admin(dsn, sql, params)

    def connect_as(self, kind: str) -> psycopg2.extensions.connection:
        """A raw connection as one of the tenant's roles, the way the service logs in."""
        role = self.names.role_of(kind)
        password = role_password(tenant_secret(self.runtime.settings), role)
        dsn = psycopg2.extensions.make_dsn(
            self.db.server, dbname=self.names.tenant_database, user=role, password=password
        )
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn

    async def with_notes(self, *documents: dict[str, Any]) -> None:
        """alice's `notes` with alice's and bob's rows, then the policies (own-rows by default)."""
        await self.sql("alice", NOTES)
        for owner, body in ROWS:
            await self.sql(
                "alice", "INSERT INTO notes (owner, body) VALUES ($1, $2)", text(owner), text(body)
            )
        assert await self.apply(*(documents or (OWN_ROWS,))) == ["notes"]


def text(value: str) -> data_pb2.Cell:
    return data_pb2.Cell(text=value)


@pytest.fixture
async def team(
    live_db: PrivateDatabase, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Team]:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("data", build) as (runtime, channel):
        yield Team(data_pb2_grpc.DataServiceStub(channel), runtime, live_db)


async def denied(call: Any) -> str:
    """The message of a call that must be refused with PERMISSION_DENIED."""
    code, message, _ = await fails(call)
    assert code == DENIED, message
    return message


# --- own-rows: what each member is served -----------------------------------------------------------------


async def test_each_member_reads_and_counts_only_own_rows_and_admins_all(team: Team) -> None:
    await team.with_notes()
    await team.sql("root", "INSERT INTO notes (owner, body) VALUES ('vic', 'v1')")
    assert await team.rows("alice", "SELECT owner, body FROM notes ORDER BY id") == [
        ["alice", "1"],
        ["alice", "2"],
    ]
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[3]]
    assert await team.rows("vic", "SELECT owner, body FROM notes") == [["vic", "v1"]]
    assert await team.rows("root", "SELECT count(*) FROM notes") == [[6]]


async def test_updates_and_deletes_touch_only_own_rows(team: Team) -> None:
    await team.with_notes()
    assert (await team.sql("alice", "UPDATE notes SET body = 'edited'")).affected_rows == 2
    assert (
        await team.sql("alice", "UPDATE notes SET body = 'hacked' WHERE owner = 'bob'")
    ).affected_rows == 0
    assert (await team.sql("alice", "DELETE FROM notes WHERE owner = 'bob'")).affected_rows == 0
    assert (await team.sql("bob", "DELETE FROM notes WHERE body = 'x'")).affected_rows == 1
    left = team.inside(f"SELECT owner, body FROM t_{team.tenant}.notes ORDER BY id")
    assert left == [
        ("alice", "edited"),
        ("alice", "edited"),
        ("bob", "bob-secret-1"),
        ("bob", "bob-secret-2"),
    ]


async def test_forged_inserts_and_owner_changes_are_refused_naming_the_policy_outcome(team: Team) -> None:
    await team.with_notes()
    forged = await denied(team.sql("alice", "INSERT INTO notes (owner, body) VALUES ('bob', 'planted')"))
    assert "denied by policy" in forged and '"notes"' in forged and "planted" not in forged
    moved = await denied(team.sql("alice", "UPDATE notes SET owner = 'bob' WHERE body = '1'"))
    assert "denied by policy" in moved
    assert (
        await team.sql("alice", "INSERT INTO notes (owner, body) VALUES ('alice', 'mine')")
    ).affected_rows == 1
    assert team.inside(f"SELECT count(*) FROM t_{team.tenant}.notes WHERE body = 'planted'") == [(0,)]


async def test_a_viewer_never_writes_whatever_the_policy_allows(team: Team) -> None:
    await team.with_notes()
    code, _, _ = await fails(team.sql("vic", "INSERT INTO notes (owner, body) VALUES ('vic', 'v')"))
    assert code == DENIED


async def test_ungoverned_tables_behave_as_before(team: Team) -> None:
    await team.with_notes()
    await team.sql("alice", "CREATE TABLE plain (owner text)")
    await team.sql("alice", "INSERT INTO plain VALUES ('alice'), ('bob')")
    assert await team.rows("bob", "SELECT count(*) FROM plain") == [[2]]
    assert await team.rows("vic", "SELECT count(*) FROM plain") == [[2]]
    await team.sql("bob", "DROP TABLE plain")  # developers still own what is not governed


async def test_deny_rules_win_for_developers_and_do_not_govern_admins(team: Team) -> None:
    def rule(effect: str, actions: list[str], condition: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"effect": effect, "actions": actions, "resource": "notes", "condition": condition or {}}

    no_secrets = {
        "name": "no-secrets",
        "rules": [
            rule("allow", ["read", "write"]),
            rule("deny", ["read", "insert"], {"record.body": {"contains": "secret"}}),
            rule("deny", ["read"], {"record.missing": "x"}),  # cannot be evaluated: does not deny
        ],
    }
    await team.with_notes(no_secrets)
    assert await team.rows("alice", "SELECT body FROM notes ORDER BY id") == [["1"], ["2"], ["x"]]
    assert await team.rows("root", "SELECT count(*) FROM notes") == [[5]]
    message = await denied(team.sql("bob", "INSERT INTO notes (owner, body) VALUES ('bob', 'top secret')"))
    assert message.startswith("denied by policy: a deny rule for insert") and "top secret" not in message
    await team.sql("root", "INSERT INTO notes (owner, body) VALUES ('root', 'admin secret')")


# --- ApplyPolicies --------------------------------------------------------------------------------------


async def test_apply_governs_named_tables_and_a_set_without_them_ungoverns(team: Team) -> None:
    await team.with_notes()
    state = f"SELECT relowner::regrole::text, relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 't_{team.tenant}.notes'::regclass"
    assert team.inside(state) == [(team.names.role_of("admin"), True, True)]
    stored = team.inside("SELECT revision, documents FROM launchpad_private.policy_set")
    assert stored == [(1, [OWN_ROWS])]
    assert await team.apply(revision=2) == []
    assert team.inside(state) == [(team.names.role_of("rw"), False, False)]
    assert team.inside(
        f"SELECT count(*) FROM pg_policy WHERE polrelid = 't_{team.tenant}.notes'::regclass"
    ) == [(0,)]
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[5]]


async def test_a_rule_that_cannot_compile_for_a_column_is_refused_and_nothing_changes(team: Team) -> None:
    await team.with_notes()
    bad = {
        "name": "nested",
        "rules": [
            {"effect": "allow", "actions": ["read"], "resource": "notes", "condition": {"record.body.x": "y"}}
        ],
    }
    code, message, details = await fails(team.apply(OWN_ROWS, bad, revision=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'notes'" in message and "'body'" in message, message
    assert (details.get("table"), details.get("column")) == ("notes", "body")
    assert team.inside("SELECT revision FROM launchpad_private.policy_set") == [(1,)]
    assert await team.rows("alice", "SELECT count(*) FROM notes") == [[2]]


async def test_a_table_running_developer_code_cannot_be_governed(team: Team) -> None:
    await team.sql("alice", NOTES)
    await team.sql("alice", "CREATE TABLE stolen (owner text, body text)")
    await team.sql(
        "alice",
        "CREATE FUNCTION copy_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO stolen VALUES (NEW.owner, NEW.body); RETURN NEW; END $$",
    )
    await team.sql(
        "alice", "CREATE TRIGGER spy AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION copy_row()"
    )
    code, message, _ = await fails(team.apply(OWN_ROWS))
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT
        and "copy_row" in message
        and "nothing was applied" in message
    )
    assert team.inside("SELECT count(*) FROM launchpad_private.policy_set") == [(0,)]


async def test_a_table_with_a_check_calling_developer_code_is_refused_when_created(team: Team) -> None:
    assert await team.apply(own_rows("notes*")) == []
    await team.sql("alice", "CREATE FUNCTION peek(v text) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
    message = await denied(
        team.sql("alice", "CREATE TABLE notes_checked (owner text, body text CHECK (peek(body)))")
    )
    assert "peek(text)" in message


async def test_a_cascading_foreign_key_to_a_developers_table_cannot_be_governed(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE parent (id int PRIMARY KEY)")
    await team.sql("alice", "INSERT INTO parent VALUES (1)")
    await team.sql(
        "alice", "CREATE TABLE notes (owner text, body text, p int REFERENCES parent ON DELETE CASCADE)"
    )
    code, message, _ = await fails(team.apply(OWN_ROWS))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "foreign key" in message
    await team.sql("alice", "ALTER TABLE notes DROP CONSTRAINT notes_p_fkey")
    await team.sql("alice", "ALTER TABLE notes ADD FOREIGN KEY (p) REFERENCES parent")  # no action: fine
    assert await team.apply(OWN_ROWS) == ["notes"]


# --- Bypasses: switching RLS off, dropping it, taking the table -----------------------------------------

OWNER_ONLY = [
    "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
    "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
    "DROP POLICY lp_read ON notes",
    "ALTER TABLE notes OWNER TO CURRENT_USER",
    "ALTER TABLE notes RENAME TO mine",
    "ALTER TABLE notes ADD COLUMN extra text",
    "DROP TABLE notes",
    "CREATE POLICY everything ON notes USING (true)",
    "CREATE RULE spy AS ON INSERT TO notes DO ALSO NOTHING",
    "CREATE INDEX ON notes (body)",
    "TRUNCATE notes",
]


async def test_row_security_off_is_refused(team: Team) -> None:
    await team.with_notes()
    message = await denied(
        team.sql("alice", "DO $$ BEGIN SET LOCAL row_security = off; PERFORM count(*) FROM notes; END $$")
    )
    assert "row_security cannot be switched off" in message
    # In the same statement as the read, the setting comes too late to matter: still only alice's rows.
    assert await team.rows(
        "alice", "SELECT set_config('row_security', 'off', true), count(*) FROM notes"
    ) == [["off", 2]]


@pytest.mark.parametrize("statement", OWNER_ONLY)
async def test_what_only_the_owner_may_do_is_refused_directly_through_do_and_through_functions(
    team: Team, statement: str
) -> None:
    await team.with_notes()
    await denied(team.sql("alice", statement))
    await denied(team.sql("alice", f"DO $$ BEGIN EXECUTE {quote(statement)}; END $$"))
    for definer in ("", " SECURITY DEFINER"):
        await team.sql(
            "alice",
            f"CREATE OR REPLACE FUNCTION attempt() RETURNS void LANGUAGE plpgsql{definer} AS $$"
            f" BEGIN EXECUTE {quote(statement)}; END $$",
        )
        await denied(team.sql("alice", "SELECT attempt()"))
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[3]]
    assert team.inside(
        f"SELECT relowner::regrole::text, relforcerowsecurity FROM pg_class WHERE oid = 't_{team.tenant}.notes'::regclass"
    ) == [(team.names.role_of("admin"), True)]


def quote(sql: str) -> str:
    return "'" + sql.replace("'", "''") + "'"


async def test_the_developers_role_is_a_member_of_no_role(team: Team) -> None:
    await team.with_notes()
    found = team.inside(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "WHERE m.member = %s::regrole",
        (team.names.role_of("rw"),),
    )
    assert found == []
    await denied(team.sql("alice", f'SET ROLE "{team.names.role_of("admin")}"'))
    await denied(team.sql("alice", f'REASSIGN OWNED BY "{team.names.role_of("admin")}" TO CURRENT_USER'))


async def test_schema_changes_of_a_governed_table_are_for_admins(team: Team) -> None:
    await team.with_notes()
    await denied(team.sql("bob", "ALTER TABLE notes ADD COLUMN tag text"))
    await team.sql("root", "ALTER TABLE notes ADD COLUMN tag text")
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[3]]  # re-rendered right after


async def test_an_admins_changes_to_a_governed_table_never_leave_it_open(team: Team) -> None:
    await team.with_notes()
    rw = team.names.role_of("rw")
    for statement in (
        "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY lp_read ON notes",
        "ALTER POLICY lp_read ON notes USING (true)",
        "CREATE POLICY everything ON notes FOR SELECT USING (true)",
        f'ALTER TABLE notes OWNER TO "{rw}"',
    ):
        await team.sql("root", statement)
        assert await team.rows("bob", "SELECT count(*) FROM notes") == [[3]], statement
        await denied(team.sql("bob", "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY"))


async def test_applying_an_unchanged_set_again_leaves_the_tables_alone(team: Team) -> None:
    await team.with_notes()
    policies = f"SELECT oid FROM pg_policy WHERE polrelid = 't_{team.tenant}.notes'::regclass ORDER BY 1"
    before = team.inside(policies)
    assert await team.apply(
        OWN_ROWS,
        {"name": "other", "rules": [{"effect": "allow", "actions": ["read"], "resource": "storage:*"}]},
        revision=2,
    ) == ["notes"]
    assert team.inside(policies) == before
    assert await team.apply(own_rows("note*"), revision=3) == ["notes"]  # same predicates: same policies
    assert team.inside(policies) == before
    read_only = {**OWN_ROWS, "rules": [{**OWN_ROWS["rules"][0], "actions": ["read"]}]}
    assert await team.apply(read_only, revision=4) == ["notes"]
    assert team.inside(policies) != before
    await denied(team.sql("alice", "INSERT INTO notes (owner, body) VALUES ('alice', 'a')"))


# --- Bypasses: code that runs with someone else's rights ------------------------------------------------


async def test_a_developers_view_without_security_invoker_serves_each_reader_own_rows(team: Team) -> None:
    await team.with_notes()
    await team.sql("alice", "CREATE VIEW all_notes AS SELECT * FROM notes")
    assert await team.rows("bob", "SELECT count(*) FROM all_notes") == [[3]]
    assert await team.rows("alice", "SELECT count(*) FROM all_notes") == [[2]]


async def test_an_admins_view_does_not_hand_a_developer_the_admins_rows(team: Team) -> None:
    await team.with_notes()
    await team.sql("root", "CREATE VIEW admin_notes AS SELECT * FROM notes")
    assert await team.rows("root", "SELECT count(*) FROM admin_notes") == [[5]]
    assert await team.rows("bob", "SELECT count(*) FROM admin_notes") == [[3]]
    assert await team.rows("vic", "SELECT count(*) FROM admin_notes") == [[0]]


async def test_security_definer_functions_of_developers_and_admins_give_no_more_rows(team: Team) -> None:
    await team.with_notes()
    body = "RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM notes'"
    await team.sql("alice", f"CREATE FUNCTION dev_count() {body}")
    await team.sql("root", f"CREATE FUNCTION admin_count() {body}")
    assert await team.rows("bob", "SELECT dev_count(), admin_count()") == [[3, 3]]
    assert await team.rows("root", "SELECT admin_count()") == [[5]]


async def test_create_table_as_copies_only_the_rows_the_copier_sees(team: Team) -> None:
    await team.with_notes()
    await team.sql("alice", "CREATE TABLE copied AS SELECT * FROM notes")
    assert await team.rows("bob", "SELECT owner FROM copied ORDER BY id") == [["alice"], ["alice"]]


async def test_a_developer_cannot_put_a_trigger_on_a_governed_table(team: Team) -> None:
    await team.with_notes()
    await team.sql(
        "alice", "CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    )
    await denied(
        team.sql("alice", "CREATE TRIGGER spy BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION noop()")
    )


async def test_a_trigger_on_a_developers_own_table_reads_with_the_writers_claims(team: Team) -> None:
    await team.with_notes()
    await team.sql("alice", "CREATE TABLE bait (v int)")
    await team.sql("alice", "CREATE TABLE loot (owner text, body text)")
    await team.sql(
        "alice",
        "CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN"
        " INSERT INTO loot SELECT owner, body FROM notes; RETURN NEW; END $$",
    )
    await team.sql("alice", "CREATE TRIGGER grab AFTER INSERT ON bait FOR EACH ROW EXECUTE FUNCTION grab()")
    await team.sql("alice", "INSERT INTO bait VALUES (1)")
    assert await team.rows("alice", "SELECT DISTINCT owner FROM loot") == [["alice"]]


async def test_policies_stored_before_the_tenant_was_provisioned_are_enforced_from_its_first_query(
    team: Team,
) -> None:
    """auth stored own-rows (say, before policies were enforced) and never applied it to this tenant's
    database: the data service reconciles before the tenant's first statement."""
    db = await open_platform_db(load_settings("auth"), Registry(), migrations=AUTH_MIGRATIONS)
    try:
        now = int(time.time() * 1000)
        async with AuthStore(db).policy_transaction() as tx:
            await tx.ensure_tenant(team.tenant, "root", now)
            await tx.insert(PolicyRecord(team.tenant, "own-rows", OWN_ROWS, now, "root"))
            await tx.bump_revision(team.tenant)
    finally:
        await db.close()
    await team.sql("root", NOTES)
    await team.sql("root", "INSERT INTO notes (owner, body) VALUES ('alice', 'a'), ('bob', 'b')")
    assert await team.rows("alice", "SELECT owner FROM notes") == [["alice"]]
    assert await team.rows("bob", "SELECT owner FROM notes") == [["bob"]]


async def test_a_deferred_trigger_firing_at_commit_gets_nothing_without_claims(team: Team) -> None:
    """Deferred constraint triggers fire at COMMIT: they must not run after the claims are gone, when a deny
    on `subject.*` could no longer be evaluated (and so would not deny) under an unconditional allow."""
    everyone_but_bob = {
        "name": "no-bob",
        "rules": [
            {"effect": "allow", "actions": ["read", "write"], "resource": "notes"},
            {
                "effect": "deny",
                "actions": ["read"],
                "resource": "notes",
                "condition": {"subject.sub": {"in": ["bob"]}},
            },
        ],
    }
    await team.with_notes(everyone_but_bob)
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[0]]
    await team.sql("bob", "CREATE TABLE bait (v int)")
    await team.sql("bob", "CREATE TABLE loot (owner text, body text)")
    await team.sql(
        "bob",
        "CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO loot SELECT owner, body FROM notes; RETURN NEW; END $$",
    )
    await team.sql(
        "bob",
        "CREATE CONSTRAINT TRIGGER grab AFTER INSERT ON bait DEFERRABLE INITIALLY DEFERRED"
        " FOR EACH ROW EXECUTE FUNCTION grab()",
    )
    await team.sql("bob", "INSERT INTO bait VALUES (1)")
    assert await team.rows("bob", "SELECT count(*) FROM loot") == [[0]]


async def test_renaming_a_table_with_a_developers_trigger_into_a_governed_name_is_refused(team: Team) -> None:
    assert await team.apply(own_rows("notes*")) == []
    await team.sql("alice", "CREATE TABLE staging (owner text, body text)")
    await team.sql("alice", "CREATE TABLE loot (owner text, body text)")
    await team.sql(
        "alice",
        "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO loot VALUES (NEW.owner, NEW.body); RETURN NEW; END $$",
    )
    await team.sql(
        "alice", "CREATE TRIGGER keep AFTER INSERT ON staging FOR EACH ROW EXECUTE FUNCTION keep()"
    )
    message = await denied(team.sql("alice", "ALTER TABLE staging RENAME TO notes_2024"))
    assert "keep()" in message
    assert await team.rows("alice", "SELECT count(*) FROM pg_class WHERE relname = 'notes_2024'") == [[0]]


async def test_a_governed_name_is_for_tables_and_security_invoker_views_only(team: Team) -> None:
    assert await team.apply(own_rows("notes*")) == []
    await team.sql("alice", "CREATE TABLE mine (owner text, body text)")
    await denied(team.sql("alice", "CREATE VIEW notes_view AS SELECT * FROM mine"))
    await denied(team.sql("alice", "CREATE MATERIALIZED VIEW notes_copy AS SELECT * FROM mine"))
    await denied(team.sql("alice", "CREATE TABLE notes_child () INHERITS (mine)"))
    await team.sql("alice", "CREATE VIEW notes_mine WITH (security_invoker) AS SELECT * FROM mine")
    await denied(team.sql("alice", "ALTER VIEW notes_mine SET (security_invoker = false)"))


# --- Bypasses: what errors and catalogs tell --------------------------------------------------------------


async def test_errors_never_reveal_a_hidden_value(team: Team) -> None:
    await team.with_notes()
    # Casting every body would fail on bob's text; RLS filters first, so only alice's ("1", "2") are cast.
    assert await team.rows("alice", "SELECT body FROM notes WHERE body::int > 0 ORDER BY 1") == [["1"], ["2"]]
    assert await team.rows("alice", "SELECT count(*) FROM notes WHERE owner = 'bob' AND body::int = 1") == [
        [0]
    ]
    code, message, _ = await fails(team.sql("bob", "SELECT 1 FROM notes WHERE body::int = 1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bob-secret" in message  # bob's own value: fine
    assert await team.rows("alice", "SELECT count(*) FROM pg_stats WHERE tablename = 'notes'") == [[0]]


# --- Bypasses: forging and replaying claims --------------------------------------------------------------

BOB = '{"roles": ["developer"], "sub": "bob", "tenant": "x"}'


async def test_claims_set_by_tenant_sql_in_the_same_statement_are_not_believed(team: Team) -> None:
    await team.with_notes()
    forge = f"set_config('request.jwt.claims', '{BOB}', true)"
    cte = f"WITH f AS MATERIALIZED (SELECT {forge}) SELECT count(*) FROM f, notes WHERE owner = 'bob'"
    assert await team.rows("alice", cte) == [[0]]
    for setter in (f"PERFORM {forge}", f"SET LOCAL request.jwt.claims = '{BOB}'"):
        message = await fails(
            team.sql(
                "alice",
                f"DO $$ BEGIN {setter}; RAISE EXCEPTION 'seen=%', (SELECT count(*) FROM notes); END $$",
            )
        )
        assert "seen=0" in message[1]
    await team.sql(
        "alice",
        "CREATE FUNCTION as_bob() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN"
        f" PERFORM {forge}; PERFORM set_config('launchpad.claims_proof', '9999999999.' || repeat('0', 64), true);"
        " RETURN (SELECT count(*) FROM notes); END $$",
    )
    assert await team.rows("alice", "SELECT as_bob()") == [[0]]
    admin = '{"roles": ["admin"], "sub": "alice"}'
    assert await team.rows("alice", f"SELECT {forge.replace(BOB, admin)}, (SELECT count(*) FROM notes)") == [
        [admin, 0]
    ]


async def test_only_a_fresh_proof_for_this_backend_makes_claims(team: Team) -> None:
    await team.with_notes()
    key = pg_rls.claims_key(tenant_secret(team.runtime.settings), team.names.tenant_database)
    claims = pg_rls.claims_text({"sub": "bob", "roles": ["developer"]})
    conn = team.connect_as("rw")
    try:
        pid, now = conn.info.backend_pid, int(time.time())
        cases = {
            "fresh": (claims, pg_rls.claims_proof(key, pid, claims, now + 60), 3),
            "other backend (replayed)": (claims, pg_rls.claims_proof(key, pid + 1, claims, now + 60), 0),
            "expired": (claims, pg_rls.claims_proof(key, pid, claims, now - 1), 0),
            "other claims": (
                claims.replace("bob", "alice"),
                pg_rls.claims_proof(key, pid, claims, now + 60),
                0,
            ),
            "other key": (claims, pg_rls.claims_proof(b"guess", pid, claims, now + 60), 0),
        }
        with conn.cursor() as cur:
            for case, (text_, proof, expected) in cases.items():
                cur.execute("BEGIN")
                cur.execute("SELECT launchpad.enter(%s, %s)", (text_, proof))
                assert cur.fetchone() == (expected > 0,), case
                cur.execute("SELECT count(*) FROM notes")
                assert cur.fetchone() == (expected,), case
                cur.execute("COMMIT")
            # A fresh call proof used again in a later transaction works (it is never in reach of tenant SQL:
            # see the next tests); the transaction proof it made does not.
            cur.execute("BEGIN")
            cur.execute("SELECT launchpad.enter(%s, %s)", (claims, cases["fresh"][1]))
            cur.execute("SELECT current_setting('launchpad.claims_proof')")
            [(made,)] = cur.fetchall()
            cur.execute("COMMIT")
            cur.execute("BEGIN")
            cur.execute(
                "SELECT set_config('request.jwt.claims', %s, true), set_config('launchpad.claims_proof', %s, true)",
                (claims, made),
            )
            cur.execute("SELECT count(*) FROM notes")
            assert cur.fetchone() == (0,)
            cur.execute("COMMIT")
    finally:
        conn.close()


async def test_claims_read_in_one_call_are_worthless_in_the_next(team: Team) -> None:
    """What a trigger of alice's could steal from bob's transaction holds in that transaction only."""
    await team.with_notes()
    [[claims, proof]] = await team.rows(
        "bob", "SELECT current_setting('request.jwt.claims'), current_setting('launchpad.claims_proof')"
    )
    assert '"bob"' in claims and len(proof) == 64
    replay = f"SELECT set_config('request.jwt.claims', {quote(claims)}, true), set_config('launchpad.claims_proof', {quote(proof)}, true)"
    for who in ("alice", "bob"):  # whichever backend the pool hands out: a new transaction
        assert await team.rows(who, f"WITH r AS MATERIALIZED ({replay}) SELECT count(*) FROM r, notes") == [
            [0]
        ]
        message = await fails(
            team.sql(
                who,
                f"DO $$ BEGIN PERFORM {replay.removeprefix('SELECT ')}; "
                "RAISE EXCEPTION 'seen=%', (SELECT count(*) FROM notes WHERE owner = 'bob'); END $$",
            )
        )
        assert "seen=0" in message[1]


async def test_no_tenant_sees_other_sessions_queries_or_the_claims_key(team: Team) -> None:
    await team.with_notes()
    await denied(team.sql("alice", "SELECT query FROM pg_stat_activity"))
    await denied(team.sql("alice", "SELECT current_query()"))
    await denied(team.sql("alice", "SELECT launchpad_private.mac('x')"))
    await denied(team.sql("alice", "SELECT pg_stat_get_backend_activity(1)"))
    await denied(team.sql("alice", "SELECT * FROM launchpad_private.claims_key"))
    await denied(team.sql("root", "SELECT * FROM launchpad_private.claims_key"))
    # The event trigger's SECURITY DEFINER work does nothing outside an event trigger.
    code, message, _ = await fails(team.sql("alice", "SELECT launchpad.after_ddl()"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "only be called in an event trigger" in message


# --- Tables created or changed later --------------------------------------------------------------------


async def test_a_table_created_later_is_governed_from_the_statement_that_creates_it(team: Team) -> None:
    assert await team.apply(own_rows("notes*")) == []
    # Inside the creating statement already: the insert after CREATE meets the default deny.
    message = await denied(
        team.sql(
            "alice",
            "DO $$ BEGIN CREATE TABLE notes_early (owner text); INSERT INTO notes_early VALUES ('bob'); END $$",
        )
    )
    assert "denied by policy" in message
    await team.sql("alice", "CREATE TABLE notes_late AS SELECT 'bob'::text AS owner, 'b'::text AS body")
    assert await team.rows("alice", "SELECT count(*) FROM notes_late") == [[0]]
    await team.sql(
        "alice", "INSERT INTO notes_late VALUES ('alice', 'a')"
    )  # the rendered policy, right after
    await denied(team.sql("alice", "INSERT INTO notes_late VALUES ('bob', 'planted')"))
    assert await team.rows("alice", "SELECT owner FROM notes_late") == [["alice"]]
    assert await team.rows("root", "SELECT count(*) FROM notes_late") == [[2]]


async def test_a_missing_column_denies_without_error_and_the_rule_follows_add_column(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE notes (id serial, body text)")
    await team.sql("alice", "INSERT INTO notes (body) VALUES ('x')")
    assert await team.apply(OWN_ROWS) == ["notes"]
    assert await team.rows("alice", "SELECT count(*) FROM notes") == [[0]]
    await team.sql("root", "ALTER TABLE notes ADD COLUMN owner text DEFAULT 'alice'")
    assert await team.rows("alice", "SELECT count(*) FROM notes") == [[1]]
    assert await team.rows("bob", "SELECT count(*) FROM notes") == [[0]]


async def test_an_admins_partition_of_a_governed_table_is_governed(team: Team) -> None:
    await team.sql("alice", "CREATE TABLE notes (owner text, body text) PARTITION BY LIST (owner)")
    assert await team.apply(OWN_ROWS) == ["notes"]
    await team.sql("root", "CREATE TABLE part_ab PARTITION OF notes FOR VALUES IN ('alice', 'bob')")
    await team.sql("root", "INSERT INTO notes VALUES ('alice', 'a'), ('bob', 'b')")
    assert await team.rows("alice", "SELECT owner FROM part_ab") == [["alice"]]
    assert await team.rows("alice", "SELECT owner FROM notes") == [["alice"]]


async def test_an_admins_new_ungoverned_table_belongs_to_the_developers(team: Team) -> None:
    await team.sql("root", "CREATE TABLE shared (id serial, v text)")
    await team.sql("alice", "INSERT INTO shared (v) VALUES ('a')")
    await team.sql("bob", "ALTER TABLE shared ADD COLUMN w text")
    assert team.inside(
        f"SELECT relowner::regrole::text FROM pg_class WHERE oid = 't_{team.tenant}.shared'::regclass"
    ) == [(team.names.role_of("rw"),)]
