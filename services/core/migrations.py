"""Each service's migrations of the platform database: files, the ledger, applying what is pending.

A service's migrations are services/<service>/migrations/NNN_name[.postgresql|.sqlite].sql, applied in
version order, each once, recorded per service in schema_migrations. PostgreSQL: one transaction per
migration under an advisory lock every runner shares; SQLite: all pending in one BEGIN IMMEDIATE.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

PLATFORM_SCHEMA = "launchpad"
# One advisory lock key for every migration runner, so replicas starting at once apply migrations in turn.
MIGRATION_LOCK_KEY = 0x4C61_756E_6368  # "Launch"
_MIGRATION_FILE = re.compile(r"^(\d{3,})_([a-z0-9_]+?)(?:\.(postgresql|sqlite))?\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed or failed to apply: the service must not start."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Path, dialect: str) -> list[Migration]:
    """NNN_name.sql files in version order; NNN_name.<dialect>.sql replaces the generic file of a version."""
    chosen: dict[int, tuple[str, str | None, Path]] = {}
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNN_name[.postgresql|.sqlite].sql")
        version, name, variant = int(match[1]), match[2], match[3]
        previous = chosen.get(version)
        if previous and previous[0] != name:
            raise MigrationError(f"{folder}: version {version} is both {previous[0]!r} and {name!r}")
        if variant not in (None, dialect) or (previous and previous[1] == dialect):
            continue
        chosen[version] = (name, variant, path)
    return [Migration(v, n, p.read_text()) for v, (n, _, p) in sorted(chosen.items())]


def service_of(folder: Path) -> str:
    """The key migrations are recorded under: services/auth/migrations -> "auth"."""
    return folder.parent.name if folder.name == "migrations" else folder.name


def split_sqlite_script(script: str) -> list[str]:
    """Statements of a script, split where SQLite itself says a statement is complete (triggers included)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


_PG_LEDGER = f"""
CREATE SCHEMA IF NOT EXISTS {PLATFORM_SCHEMA};
REVOKE ALL ON SCHEMA {PLATFORM_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {PLATFORM_SCHEMA}.schema_migrations (
    service text NOT NULL, version integer NOT NULL, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (service, version))
"""
_SQLITE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), PRIMARY KEY (service, version))
"""


def migrate_pg(conn: psycopg2.extensions.connection, service: str, migrations: list[Migration]) -> int:
    """Applies pending migrations under the advisory lock, one transaction each. Returns how many ran."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            cur.execute(_PG_LEDGER)
            cur.execute(
                f"SELECT version FROM {PLATFORM_SCHEMA}.schema_migrations WHERE service = %s", (service,)
            )
            done = {row[0] for row in cur.fetchall()}
            pending = [m for m in migrations if m.version not in done]
            for migration in pending:
                _apply_pg(conn, service, migration)
            return len(pending)
        finally:
            conn.autocommit = True
            cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def _apply_pg(conn: psycopg2.extensions.connection, service: str, migration: Migration) -> None:
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute(migration.sql)
            cur.execute(
                f"INSERT INTO {PLATFORM_SCHEMA}.schema_migrations (service, version, name) VALUES (%s, %s, %s)",
                (service, migration.version, migration.name),
            )
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
            raise
        raise MigrationError(f"{service} migration {migration.version:03d}_{migration.name}: {exc}") from exc


def migrate_sqlite(conn: sqlite3.Connection, service: str, migrations: list[Migration]) -> int:
    """Applies pending migrations in one BEGIN IMMEDIATE transaction (other runners wait on busy_timeout)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_LEDGER)
        done = {
            r[0] for r in conn.execute("SELECT version FROM schema_migrations WHERE service = ?", (service,))
        }
        pending = [m for m in migrations if m.version not in done]
        for migration in pending:
            try:
                for statement in split_sqlite_script(migration.sql):
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(
                    f"{service} migration {migration.version:03d}_{migration.name}: {exc}"
                ) from exc
            conn.execute(
                "INSERT INTO schema_migrations (service, version, name) VALUES (?, ?, ?)",
                (service, migration.version, migration.name),
            )
        conn.execute("COMMIT")
        return len(pending)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
