"""The platform database (services/core/db.py) on SQLite, and the parts shared with PostgreSQL.

PostgreSQL itself: tests/live/test_data_pg_platform.py.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from services.core.config import load_settings
from services.core.db import SqlitePlatformDb, UniqueViolation, open_platform_db, to_pyformat
from services.core.deps import Mode, Registry
from services.core.errors import AlreadyExists, Unavailable
from services.core.migrations import (
    MigrationError,
    load_migrations,
    migrate_sqlite,
    service_of,
    split_sqlite_script,
)


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    return write(
        tmp_path / "svc" / "migrations",
        {
            "001_widgets.sql": "CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);",
            "002_notes.sql": "CREATE TABLE notes (id INTEGER PRIMARY KEY, widget INTEGER REFERENCES widgets(id));",
        },
    )


# --- placeholders and scripts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT '?', \"q?\" FROM t WHERE a = ?", "SELECT '?', \"q?\" FROM t WHERE a = %s"),
        ("SELECT 'it''s ?' -- why?\n, ?", "SELECT 'it''s ?' -- why?\n, %s"),
        ("SELECT 5 % 2, '100%' /* 1%? */ WHERE x = ?", "SELECT 5 %% 2, '100%%' /* 1%%? */ WHERE x = %s"),
    ],
)
def test_qmark_placeholders_become_pyformat_outside_quotes_and_comments(sql: str, expected: str) -> None:
    assert to_pyformat(sql) == expected


def test_sqlite_scripts_split_where_sqlite_says_a_statement_ends() -> None:
    script = """
    CREATE TABLE a (x TEXT DEFAULT ';');
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
        UPDATE a SET x = 'y;z';
        SELECT 1;
    END;
    -- trailing comment
    """
    statements = split_sqlite_script(script)
    assert len(statements) == 3
    assert statements[0].startswith("CREATE TABLE a")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


# --- migration files ------------------------------------------------------------------------------------


def test_dialect_variants_replace_the_generic_file(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "m",
        {
            "001_base.sql": "generic 1",
            "002_times.sql": "generic 2",
            "002_times.sqlite.sql": "sqlite 2",
            "003_grants.postgresql.sql": "pg 3",
        },
    )
    assert [(m.version, m.sql) for m in load_migrations(folder, "sqlite")] == [
        (1, "generic 1"),
        (2, "sqlite 2"),
    ]
    assert [(m.version, m.sql) for m in load_migrations(folder, "postgresql")] == [
        (1, "generic 1"),
        (2, "generic 2"),
        (3, "pg 3"),
    ]


@pytest.mark.parametrize(
    "files",
    [{"1_short.sql": ""}, {"001-dash.sql": ""}, {"001_a.sql": "", "001_b.sql": ""}, {"001_a.mysql.sql": ""}],
)
def test_malformed_migration_folders_fail_loudly(tmp_path: Path, files: dict[str, str]) -> None:
    with pytest.raises(MigrationError):
        load_migrations(write(tmp_path / "m", files), "sqlite")


def test_migrations_are_recorded_under_the_service_folder() -> None:
    assert service_of(Path("services/auth/migrations")) == "auth"
    assert service_of(Path("/x/deploy")) == "deploy"


def test_missing_folder_means_no_migrations(tmp_path: Path) -> None:
    assert load_migrations(tmp_path / "nothing", "sqlite") == []


# --- applying migrations --------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def test_migrations_apply_once_and_are_idempotent(tmp_path: Path, migrations: Path) -> None:
    conn = _connect(tmp_path / "p.sqlite")
    steps = load_migrations(migrations, "sqlite")
    assert migrate_sqlite(conn, "svc", steps) == 2
    assert migrate_sqlite(conn, "svc", steps) == 0  # a CREATE TABLE run twice would have failed
    rows = conn.execute("SELECT service, version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [("svc", 1, "widgets"), ("svc", 2, "notes")]


def test_the_same_version_of_two_services_does_not_collide(tmp_path: Path, migrations: Path) -> None:
    conn = _connect(tmp_path / "p.sqlite")
    migrate_sqlite(conn, "svc", load_migrations(migrations, "sqlite"))
    other = write(tmp_path / "other" / "migrations", {"001_things.sql": "CREATE TABLE things (id INTEGER);"})
    assert migrate_sqlite(conn, "other", load_migrations(other, "sqlite")) == 1


def test_two_runners_at_once_apply_each_migration_exactly_once(tmp_path: Path, migrations: Path) -> None:
    path, steps = tmp_path / "p.sqlite", load_migrations(migrations, "sqlite")
    _connect(path).execute("PRAGMA journal_mode = WAL")
    start, results, errors = threading.Barrier(2), [], []

    def runner() -> None:
        conn = _connect(path)
        start.wait()
        try:
            results.append(migrate_sqlite(conn, "svc", steps))
        except Exception as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [0, 2]


def test_a_failing_migration_rolls_back_everything_of_that_run(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "svc" / "migrations",
        {"001_ok.sql": "CREATE TABLE ok (id INTEGER);", "002_bad.sql": "CREATE TABLE broken (;"},
    )
    conn = _connect(tmp_path / "p.sqlite")
    with pytest.raises(MigrationError, match="002_bad"):
        migrate_sqlite(conn, "svc", load_migrations(folder, "sqlite"))
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "ok" not in tables and "schema_migrations" not in tables


# --- the PlatformDb API ---------------------------------------------------------------------------------


async def test_embedded_platform_db_round_trip(settings_env: Path, migrations: Path) -> None:
    deps = Registry()
    db = await open_platform_db(load_settings("auth"), deps, migrations=migrations)
    try:
        assert db.backend == "sqlite"
        assert await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (1, "a '?' 100%")) == 1
        assert await db.fetchall("SELECT id, name FROM widgets") == [{"id": 1, "name": "a '?' 100%"}]
        assert await db.fetchone("SELECT id FROM widgets WHERE id = ?", (2,)) is None
        assert await db.execute("UPDATE widgets SET name = ? WHERE id > ?", ("b", 0)) == 1
        with pytest.raises(UniqueViolation) as err:
            await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (2, "b"))
        assert isinstance(err.value, AlreadyExists)
        with pytest.raises(UniqueViolation):
            await db.execute("INSERT INTO widgets (id, name) VALUES (?, ?)", (1, "c"))
        assert await deps.probe() is True  # the registered check is the database's ping
    finally:
        await db.close()
    [dep] = deps.all()
    assert (dep.name, dep.mode, dep.target) == ("sql", Mode.EMBEDDED, str(settings_env / "platform.sqlite"))
    assert dep.remediation == "set POSTGRES_DSN to a reachable PostgreSQL"


async def test_embedded_platform_db_survives_reopening(settings_env: Path, migrations: Path) -> None:
    for _ in range(2):
        db = await open_platform_db(load_settings("auth"), Registry(), migrations=migrations)
        await db.execute("INSERT OR IGNORE INTO widgets (id, name) VALUES (1, 'a')")
        await db.close()
    db = await open_platform_db(load_settings("auth"), Registry(), migrations=migrations)
    assert await db.fetchone("SELECT count(*) AS n FROM widgets") == {"n": 1}
    await db.close()


async def test_unreachable_postgres_in_auto_mode_falls_back_and_says_so(
    settings_env: Path, migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://nobody:secret@127.0.0.1:1/none")
    deps = Registry()
    db = await open_platform_db(load_settings("auth"), deps, migrations=migrations)
    try:
        assert db.backend == "sqlite"
        [dep] = deps.all()
        assert dep.mode == Mode.FALLBACK and "secret" not in dep.target
        assert dep.remediation
    finally:
        await db.close()


async def test_simulation_mode_true_never_touches_postgres(
    settings_env: Path, migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("SIMULATION_MODE", "true")
    deps = Registry()
    db = await open_platform_db(load_settings("auth"), deps, migrations=migrations)
    assert db.backend == "sqlite" and deps.all()[0].mode == Mode.EMBEDDED
    await db.close()


async def test_live_only_mode_with_postgres_down_is_unavailable_not_a_fallback(
    settings_env: Path, migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://nobody:secret@127.0.0.1:1/none")
    monkeypatch.setenv("SIMULATION_MODE", "false")
    deps = Registry()
    db = await open_platform_db(load_settings("auth"), deps, migrations=migrations)
    try:
        assert db.backend == "postgresql"
        [dep] = deps.all()
        assert dep.mode == Mode.LIVE and dep.healthy is False
        assert deps.serving() is False
        with pytest.raises(Unavailable):
            await db.fetchall("SELECT 1")
        with pytest.raises(Unavailable):
            await db.ping()
        assert await deps.probe() is False
        assert not (settings_env / "platform.sqlite").exists()
    finally:
        await db.close()


async def test_sqlite_that_cannot_be_opened_is_unavailable(tmp_path: Path, migrations: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    db = SqlitePlatformDb(blocker / "platform.sqlite", migrations)
    with pytest.raises(Unavailable):
        await db.ping()
    await db.close()
