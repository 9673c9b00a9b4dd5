"""The policy book (services/core/policy/book.py) and the change pipeline of services/auth/policy_admin.py
on a real SQLite platform database, with a recording enforcer in place of the data service.

End to end through gRPC: tests/services/test_auth_policies.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from services.auth.app import MIGRATIONS
from services.auth.policy_admin import PolicyAdmin
from services.auth.store import AuthStore, Policies
from services.core.config import load_settings
from services.core.context import Principal
from services.core.db import PlatformDb, SqlitePlatformDb
from services.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.core.policy.book import PolicyBook, open_policy_book
from services.core.server import new_runtime

ADA = Principal(subject="ada", tenant="acme", roles=("admin",))
OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
NO_BIG = {"name": "no-big", "rules": [{"effect": "deny", "actions": ["write"], "resource": "orders"}]}


class Recorder:
    """An Enforcer that records (tenant, names, revision) and refuses the calls listed in `refuse`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], int]] = []
        self.refuse: list[Exception] = []

    async def apply(self, tenant: str, documents: Sequence[Mapping[str, Any]], revision: int) -> None:
        self.calls.append((tenant, tuple(d["name"] for d in documents), revision))
        if self.refuse:
            raise self.refuse.pop(0)


class FailingCommit(AuthStore):
    """The commit of the next change fails after its block ran (as when the database goes away)."""

    failures = 0

    @asynccontextmanager
    async def policy_transaction(self) -> AsyncIterator[Policies]:
        async with super().policy_transaction() as tx:
            yield tx
            if self.failures:
                self.failures -= 1
                raise Unavailable("PostgreSQL is not available")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqlitePlatformDb]:
    opened = SqlitePlatformDb(tmp_path / "platform.sqlite", MIGRATIONS)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -------------------------------------------------------------------------------------------- the book


async def test_no_auth_tables_means_no_policies(tmp_path: Path) -> None:
    bare = SqlitePlatformDb(tmp_path / "bare.sqlite", tmp_path / "none")
    await bare.open()
    try:
        policies = await PolicyBook(bare).current("acme")
        assert (policies.revision, policies.policies) == (0, ())
    finally:
        await bare.close()


async def test_a_stored_policy_that_no_longer_compiles_fails_closed(db: SqlitePlatformDb) -> None:
    store, recorder = AuthStore(db), Recorder()
    await PolicyAdmin(store, recorder).create(ADA, OWN_ROWS)
    await db.execute("UPDATE auth_policies SET document = ?", (json.dumps({"name": "x", "rules": "?"}),))
    await db.execute("UPDATE auth_policy_revisions SET revision = revision + 1")
    with pytest.raises(FailedPrecondition, match="a stored policy of tenant 'acme' no longer compiles"):
        await PolicyBook(db).current("acme")


async def test_a_database_that_fails_is_an_error_not_an_empty_set(db: SqlitePlatformDb) -> None:
    class Down(PlatformDb):
        backend = "sqlite"

        async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
            raise Unavailable("SQLite platform database is not available")

        execute = ping = close = transaction = None  # type: ignore[assignment]

    with pytest.raises(Unavailable):
        await PolicyBook(Down()).current("acme")


async def test_open_policy_book_reads_the_platform_database_auth_writes(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage and realtime have no platform tables: the book opens auth's database with no migrations of
    its own (nothing recorded for them) and registers it as their "sql" dependency."""
    settings = load_settings("auth")
    auth_db = SqlitePlatformDb(settings.process.data_dir / "platform.sqlite", MIGRATIONS)
    await auth_db.open()
    runtime = new_runtime(load_settings("storage"))
    try:
        book = await open_policy_book(runtime)
        assert (await book.current("acme")).revision == 0
        await PolicyAdmin(AuthStore(auth_db), Recorder()).create(ADA, OWN_ROWS)
        assert [p.name for p in (await book.current("acme")).policies] == ["own-rows"]
        assert [d.name for d in runtime.deps.all()] == ["sql"]
        ledger = await auth_db.fetchall("SELECT DISTINCT service FROM schema_migrations")
        assert ledger == [{"service": "auth"}]
    finally:
        await runtime.close()
        await auth_db.close()


# ---------------------------------------------------------------------------------- the change pipeline


async def test_a_refused_apply_rolls_the_change_back(db: SqlitePlatformDb) -> None:
    store, recorder = AuthStore(db), Recorder()
    admin = PolicyAdmin(store, recorder)
    await admin.create(ADA, OWN_ROWS)
    recorder.refuse.append(InvalidArgument("table orders: no column amount"))
    with pytest.raises(InvalidArgument):
        await admin.create(ADA, NO_BIG)
    assert [p.name for p in await store.list_policies("acme")] == ["own-rows"]
    assert await store.policy_revision("acme") == 1
    assert recorder.calls == [("acme", ("own-rows",), 1), ("acme", ("no-big", "own-rows"), 2)]


async def test_a_commit_that_fails_after_the_apply_re_applies_the_stored_set(db: SqlitePlatformDb) -> None:
    store, recorder = FailingCommit(db), Recorder()
    admin = PolicyAdmin(store, recorder)
    await admin.create(ADA, OWN_ROWS)
    store.failures = 1
    with pytest.raises(Unavailable):
        await admin.replace(ADA, "own-rows", NO_BIG | {"name": "own-rows"})
    assert recorder.calls[1:] == [
        ("acme", ("own-rows",), 2),  # the new set, applied before the commit that failed
        ("acme", ("own-rows",), 1),  # the stored one again, at the stored revision
    ]
    [stored] = await store.list_policies("acme")
    assert stored.document == OWN_ROWS and await store.policy_revision("acme") == 1


async def test_when_even_the_re_apply_cannot_read_the_database_the_previous_set_is_applied(
    db: SqlitePlatformDb,
) -> None:
    store, recorder = FailingCommit(db), Recorder()
    admin = PolicyAdmin(store, recorder)
    await admin.create(ADA, OWN_ROWS)
    store.failures = 2  # the change's commit, then the re-apply's own transaction
    with pytest.raises(Unavailable):
        await admin.delete(ADA, "own-rows")
    assert recorder.calls[1:] == [
        ("acme", (), 2),  # the delete, applied
        ("acme", ("own-rows",), 1),  # re-apply under the lock (its commit then failed too)
        ("acme", ("own-rows",), 1),  # and the set from before the change
    ]
    assert [p.name for p in await store.list_policies("acme")] == ["own-rows"]


async def test_migration_002_upgrades_stored_policies(tmp_path: Path) -> None:
    """Policies stored before revisions existed: updated_* start as created_*, and their tenant is at 1."""
    from services.core.db import connect_sqlite
    from services.core.migrations import load_migrations, migrate_sqlite

    path = tmp_path / "platform.sqlite"
    conn = connect_sqlite(path)
    try:
        [first, *_] = load_migrations(MIGRATIONS, "sqlite")
        migrate_sqlite(conn, "auth", [first])
        conn.execute("INSERT INTO auth_tenants VALUES ('acme', 1, 'admin')")
        conn.execute(
            "INSERT INTO auth_policies VALUES ('acme', 'own-rows', ?, 5, 'ada')", (json.dumps(OWN_ROWS),)
        )
    finally:
        conn.close()
    db = SqlitePlatformDb(path, MIGRATIONS)
    await db.open()
    try:
        [stored] = await AuthStore(db).list_policies("acme")
        assert (stored.updated_at, stored.updated_by) == (5, "ada")
        policies = await PolicyBook(db).current("acme")
        assert (policies.revision, [p.name for p in policies.policies]) == (1, ["own-rows"])
    finally:
        await db.close()
