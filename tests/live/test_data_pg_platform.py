"""The platform database (services/core/db.py) against real PostgreSQL, in a private database.

Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from services.core.config import load_settings
from services.core.db import UniqueViolation, open_platform_db, pg_connect_kwargs
from services.core.deps import Mode, Registry
from services.core.migrations import MigrationError, load_migrations, migrate_pg
from tests.conftest import LIVE_ENV
from tests.support import PrivateDatabase, need_env, pg_admin

pytestmark = pytest.mark.live


admin = pg_admin


@pytest.fixture(scope="module")
def private_db() -> Iterator[str]:
    """A fresh database on the configured server for this module, dropped afterwards."""
    database = PrivateDatabase(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_data_platform")
    try:
        yield database.dsn
    finally:
        database.drop()


@pytest.fixture
def live_env(private_db: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("POSTGRES_DSN", private_db)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    return private_db


def migrations_folder(root: Path, table: str) -> Path:
    folder = root / f"svc_{uuid.uuid4().hex[:8]}" / "migrations"
    folder.mkdir(parents=True)
    (folder / "001_create.sql").write_text(
        f"CREATE TABLE {table} (id integer PRIMARY KEY, name text UNIQUE);"
    )
    (folder / "002_seed.sql").write_text(f"INSERT INTO {table} VALUES (1, 'first');")
    (folder / "003_col.postgresql.sql").write_text(f"ALTER TABLE {table} ADD COLUMN at timestamptz;")
    return folder


async def test_platform_tables_live_in_the_launchpad_schema(live_env: str, tmp_path: Path) -> None:
    folder = migrations_folder(tmp_path, "widgets")
    deps = Registry()
    db = await open_platform_db(load_settings("auth"), deps, migrations=folder)
    try:
        assert db.backend == "postgresql"
        [dep] = deps.all()
        assert dep.mode == Mode.LIVE and dep.healthy
        rows = admin(
            live_env, "SELECT table_schema FROM information_schema.tables WHERE table_name = 'widgets'"
        )
        assert rows == [("launchpad",)]
        assert await db.fetchall("SELECT id, name FROM widgets") == [{"id": 1, "name": "first"}]
        assert await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (2, "it's 100% ?")) == 1
        assert await db.fetchone("SELECT name FROM widgets WHERE id = ? AND name LIKE '%?%'", (2,)) == {
            "name": "it's 100% ?"
        }
        with pytest.raises(UniqueViolation):
            await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (3, "first"))
        with pytest.raises(UniqueViolation):
            await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (1, "other"))
        assert await db.execute("DELETE FROM widgets WHERE id > ?", (0,)) == 2
        await db.ping()
    finally:
        await db.close()


def test_public_has_no_access_to_the_platform_schema(live_env: str, tmp_path: Path) -> None:
    conn = psycopg2.connect(live_env, **pg_connect_kwargs())
    migrate_pg(conn, "probe", [])
    conn.close()
    [(usage,)] = admin(live_env, "SELECT has_schema_privilege('public', 'launchpad', 'USAGE')")
    assert usage is False


def _run_migrations(dsn: str, folder: str, service: str, start: threading.Barrier | None) -> int:
    conn = psycopg2.connect(dsn, **pg_connect_kwargs())
    try:
        if start is not None:
            start.wait()
        return migrate_pg(conn, service, load_migrations(Path(folder), "postgresql"))
    finally:
        conn.close()


def test_two_threads_migrating_at_once_apply_each_migration_once(live_env: str, tmp_path: Path) -> None:
    folder = migrations_folder(tmp_path, "threaded")
    start, results, errors = threading.Barrier(2), [], []

    def runner() -> None:
        try:
            results.append(_run_migrations(live_env, str(folder), "threaded_svc", start))
        except Exception as exc:  # collected: the assertion names it
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [0, 3]
    assert admin(live_env, "SELECT count(*) FROM launchpad.threaded") == [(1,)]
    recorded = admin(
        live_env,
        "SELECT version FROM launchpad.schema_migrations WHERE service = %s ORDER BY 1",
        ("threaded_svc",),
    )
    assert recorded == [(1,), (2,), (3,)]


def test_two_processes_migrating_at_once_apply_each_migration_once(live_env: str, tmp_path: Path) -> None:
    folder = migrations_folder(tmp_path, "forked")
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        results = pool.starmap(_run_migrations, [(live_env, str(folder), "forked_svc", None)] * 2)
    assert sorted(results) == [0, 3]
    assert admin(live_env, "SELECT count(*) FROM launchpad.forked") == [(1,)]


def test_a_failing_migration_is_rolled_back_and_stops_start_up(live_env: str, tmp_path: Path) -> None:
    folder = tmp_path / "broken_svc" / "migrations"
    folder.mkdir(parents=True)
    (folder / "001_ok.sql").write_text("CREATE TABLE fine (id integer);")
    (folder / "002_bad.sql").write_text("CREATE TABLE half (id integer); SELECT no_such_function();")
    with pytest.raises(MigrationError, match="002_bad"):
        _run_migrations(live_env, str(folder), "broken_svc", None)
    tables = {
        row[0] for row in admin(live_env, "SELECT tablename FROM pg_tables WHERE schemaname = 'launchpad'")
    }
    assert "fine" in tables and "half" not in tables
    recorded = admin(live_env, "SELECT version FROM launchpad.schema_migrations WHERE service = 'broken_svc'")
    assert recorded == [(1,)]
    # Nothing is left locked: the next runner gets the advisory lock and retries the failed step.
    with pytest.raises(MigrationError):
        _run_migrations(live_env, str(folder), "broken_svc", None)
