"""The platform database: auth's users and policies, deploy's artifacts (their migrations: core.migrations).

LIVE: PostgreSQL (POSTGRES_DSN) through a bounded psycopg2 pool; platform tables live in schema `launchpad`
(every connection's search_path), which no tenant role can read. EMBEDDED / FALLBACK: one SQLite file,
data_dir/platform.sqlite. SQL is written once with `?` placeholders for both. Blocking calls run in a
bounded thread pool, never on the event loop. With SIMULATION_MODE=false and PostgreSQL down nothing falls
back: the "sql" dependency is unhealthy and every call raises Unavailable until PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from services.core.blocking import Blocking
from services.core.config import Settings
from services.core.deps import Mode, Registry, select_mode
from services.core.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, Unavailable
from services.core.migrations import (
    PLATFORM_SCHEMA,
    Migration,
    load_migrations,
    migrate_pg,
    migrate_sqlite,
    service_of,
)

REMEDIATION = "set POSTGRES_DSN to a reachable PostgreSQL"
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 30_000
BUSY_TIMEOUT_MS = 10_000
POOL_SIZE = 8

log = logging.getLogger("launchpad.db")
T = TypeVar("T")
Row = dict[str, Any]


class UniqueViolation(AlreadyExists):
    """A unique or primary-key constraint refused the row (both backends)."""


class PlatformDb(ABC):
    """The platform tables of one process. SQL uses `?` placeholders on both backends."""

    backend: str  # "postgresql" | "sqlite"

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one statement in its own transaction; returns the row count."""

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """`async with db.transaction() as tx:` statements on one connection, committed together when the
        block ends, rolled back when it raises. Other awaits may happen inside (a call to another service):
        the transaction, its locks and its connection are held meanwhile, so keep the block short.

        PostgreSQL: READ COMMITTED; a row an UPDATE (or upsert) touched stays locked until the end, which
        serializes concurrent writers of that row. SQLite: BEGIN IMMEDIATE, so the whole file is locked for
        other writers (they wait up to the busy timeout) until the end; readers are never blocked (WAL).
        """

    @abstractmethod
    async def ping(self) -> None:
        """Raises Unavailable when the database does not answer (the Registry check)."""

    @abstractmethod
    async def close(self) -> None: ...


# A statement function of one backend: (cursor or connection, sql, params) -> result.
Statement = Callable[[Any, str, tuple[Any, ...]], Any]


@dataclass(frozen=True, slots=True)
class Transaction:
    """The statements of one open transaction (see PlatformDb.transaction); same `?` SQL as PlatformDb."""

    _run: Callable[[Statement, str, tuple[Any, ...]], Awaitable[Any]]  # runs on the held connection
    _fetchall: Statement
    _execute: Statement
    _sql: Callable[[str], str]  # the backend's placeholder style

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._run(self._fetchall, self._sql(sql), tuple(params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._run(self._execute, self._sql(sql), tuple(params))


class _HeldTransactions(ABC):
    """PlatformDb.transaction for both backends: a pooled connection held in a pool thread for the block."""

    _slots: asyncio.Semaphore
    _blocking: Blocking

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        await self._before_transaction()
        async with self._slots:  # statements below use the pool threads directly: no second slot
            conn = await self._blocking.run(self._begin)
            committed = False
            try:
                yield Transaction(
                    lambda fn, *args: self._blocking.run(self._in_transaction, conn, fn, *args),
                    *self._dialect(),
                )
                committed = True
            finally:  # runs to its end in the pool thread even if this task is cancelled meanwhile
                await self._blocking.run(self._end, conn, committed)

    @abstractmethod
    async def _before_transaction(self) -> None:
        """Waits until the database takes statements."""

    @abstractmethod
    def _dialect(self) -> tuple[Statement, Statement, Callable[[str], str]]:
        """The backend's fetchall and execute statements and its placeholder style, for Transaction."""

    @abstractmethod
    def _begin(self) -> Any:
        """In a pool thread: a connection with its transaction open."""

    @abstractmethod
    def _in_transaction(self, conn: Any, fn: Statement, *args: Any) -> Any: ...

    @abstractmethod
    def _end(self, conn: Any, commit: bool) -> None:
        """In a pool thread: COMMIT (commit=True) or ROLLBACK, and the connection back to the pool."""


# --- SQL text helpers ------------------------------------------------------------------------------------

_QMARK_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|%", re.DOTALL)


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """`?` placeholders -> psycopg2's `%s`; a literal `%` becomes `%%`. Quotes and comments are left alone."""

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "?":
            return "%s"
        return token.replace("%", "%%")

    return _QMARK_TOKENS.sub(swap, sql)


# --- Error mapping ---------------------------------------------------------------------------------------

_SQLITE_DOWN = {5, 6, 8, 10, 11, 13, 14, 26}  # BUSY LOCKED READONLY IOERR CORRUPT FULL CANTOPEN NOTADB
_SQLITE_UNIQUE = {1555, 2067}  # SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE


def platform_pg_error(exc: psycopg2.Error) -> Exception:
    """The ServiceError a platform caller sees; a plain bug in our own SQL stays what it is."""
    if isinstance(exc, psycopg2.errors.UniqueViolation):
        return UniqueViolation(
            exc.diag.message_primary or "duplicate key", constraint=exc.diag.constraint_name
        )
    if isinstance(exc, psycopg2.errors.QueryCanceled):
        return DeadlineExceeded("platform database statement timed out")
    if isinstance(exc, psycopg2.IntegrityError):
        return FailedPrecondition(exc.diag.message_primary or str(exc), sqlstate=exc.pgcode)
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return pg_unavailable("PostgreSQL is not available", exc)
    return exc


def platform_sqlite_error(exc: sqlite3.Error) -> Exception:
    code = getattr(exc, "sqlite_errorcode", 0)
    if code in _SQLITE_UNIQUE:
        return UniqueViolation(str(exc))
    if isinstance(exc, sqlite3.IntegrityError):
        return FailedPrecondition(str(exc))
    if code & 0xFF in _SQLITE_DOWN:
        return Unavailable(f"SQLite platform database is not available: {exc}")
    return exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def pg_unavailable(what: str, exc: BaseException) -> Unavailable:
    """UNAVAILABLE saying `what` failed; the driver's text (server address, role names) goes to the service
    log only, never to API clients."""
    log.warning("%s: %s", what, first_line(exc))
    return Unavailable(f"{what} (the service log has the driver's message)")


# --- PostgreSQL ------------------------------------------------------------------------------------------


def pg_connect_kwargs(search_path: str = PLATFORM_SCHEMA) -> dict[str, Any]:
    """Per-connection settings sent in the start-up packet (no extra round trip)."""
    options = f"-c search_path={search_path} -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return {"connect_timeout": CONNECT_TIMEOUT_S, "options": options, "application_name": "launchpad"}


class PgPool:
    """A bounded set of reusable psycopg2 connections, used from worker threads.

    Not psycopg2.pool.ThreadedConnectionPool: that one opens `minconn` connections eagerly (failing start-up
    when PostgreSQL is down) and closes every returned connection beyond `minconn`, so a lazily filled pool
    would reconnect on every call. Concurrency is bounded by the callers (a semaphore and a fixed number of
    worker threads); this keeps at most `size` idle connections and drops broken ones.
    """

    def __init__(self, dsn: str, size: int, **connect_kwargs: Any) -> None:
        self.dsn, self.size, self._kwargs = dsn, size, connect_kwargs
        self._idle: list[psycopg2.extensions.connection] = []
        self._closed = False

    def get(self) -> psycopg2.extensions.connection:
        try:
            return self._idle.pop()  # list.pop is atomic: no lock needed between worker threads
        except IndexError:
            return psycopg2.connect(self.dsn, **self._kwargs)

    def put(self, conn: psycopg2.extensions.connection) -> None:
        """Keeps a healthy, idle connection for reuse; closes anything else."""
        idle = not conn.closed and conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        if idle and not self._closed and len(self._idle) < self.size:
            self._idle.append(conn)
        else:
            conn.close()

    def discard_idle(self) -> None:
        """After a connection died (server restart): the idle ones are most likely dead too."""
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:  # emptied by another thread meanwhile
                return

    def close(self) -> None:
        self._closed = True
        self.discard_idle()


class PgPlatformDb(_HeldTransactions, PlatformDb):
    backend = "postgresql"

    def __init__(self, dsn: str, folder: Path, *, size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self._pool = PgPool(dsn, size, **pg_connect_kwargs())
        self._slots = asyncio.Semaphore(size)
        self._blocking = Blocking("platform-pg", size)
        self._service, self._migrations = service_of(folder), load_migrations(folder, "postgresql")
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.run(_pg_fetchall, to_pyformat(sql), tuple(params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self.run(_pg_execute, to_pyformat(sql), tuple(params))

    async def ping(self) -> None:
        await self.run(_pg_execute, "SELECT 1", ())

    async def _before_transaction(self) -> None:
        await self.ensure_ready()

    def _dialect(self) -> tuple[Statement, Statement, Callable[[str], str]]:
        return _pg_fetchall, _pg_execute, to_pyformat

    def _begin(self) -> psycopg2.extensions.connection:
        try:
            conn = self._pool.get()
            conn.autocommit = False  # psycopg2 opens the transaction at the first statement
        except psycopg2.Error as exc:
            raise platform_pg_error(exc) from exc
        return conn

    def _in_transaction(self, conn: psycopg2.extensions.connection, fn: Statement, *args: Any) -> Any:
        try:
            with conn.cursor() as cur:
                return fn(cur, *args)
        except psycopg2.Error as exc:
            if conn.closed:
                self._pool.discard_idle()
            raise platform_pg_error(exc) from exc

    def _end(self, conn: psycopg2.extensions.connection, commit: bool) -> None:
        try:
            if commit:
                conn.commit()
        except psycopg2.Error as exc:
            if conn.closed:
                self._pool.discard_idle()
            raise platform_pg_error(exc) from exc
        finally:
            if not conn.closed:  # the block raised or COMMIT failed: roll back (a no-op after a commit)
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
                    conn.autocommit = True
            self._pool.put(conn)

    async def close(self) -> None:
        await self._blocking.run(self._pool.close)
        self._blocking.shutdown()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(cursor, *args) on a pooled autocommit connection, in the thread pool, errors mapped."""
        await self.ensure_ready()
        return await self._call(fn, *args)

    async def ensure_ready(self) -> None:
        """Runs the migrations once, as soon as PostgreSQL answers (at start-up, or later when it comes back)."""
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                await self._call(_pg_migrate_cursor, self._service, self._migrations)
                self._ready = True

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await self._blocking.run(self._with_connection, fn, *args)

    def _with_connection(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            conn = self._pool.get()
            conn.autocommit = True
        except psycopg2.Error as exc:
            raise platform_pg_error(exc) from exc
        try:
            with conn.cursor() as cur:
                return fn(cur, *args)
        except psycopg2.Error as exc:
            if conn.closed:  # this call fails; the next ones get fresh connections
                self._pool.discard_idle()
            raise platform_pg_error(exc) from exc
        finally:
            self._pool.put(conn)


def _pg_fetchall(cur: psycopg2.extensions.cursor, sql: str, params: tuple[Any, ...]) -> list[Row]:
    cur.execute(sql, params)
    names = [column.name for column in cur.description or ()]
    return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def _pg_execute(cur: psycopg2.extensions.cursor, sql: str, params: tuple[Any, ...]) -> int:
    cur.execute(sql, params)
    return cur.rowcount


def _pg_migrate_cursor(cur: psycopg2.extensions.cursor, service: str, migrations: list[Migration]) -> int:
    return migrate_pg(cur.connection, service, migrations)


def _plain(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value


# --- SQLite ----------------------------------------------------------------------------------------------


def connect_sqlite(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit), WAL, busy_timeout, usable from pool threads."""
    conn = sqlite3.connect(path, uri=uri, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class SqlitePlatformDb(_HeldTransactions, PlatformDb):
    backend = "sqlite"

    def __init__(self, path: Path, folder: Path, *, size: int = 4) -> None:
        self.path = path
        self._idle: list[sqlite3.Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._blocking = Blocking("platform-sqlite", size)
        self._service, self._migrations = service_of(folder), load_migrations(folder, "sqlite")

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._call(_sqlite_setup, self._service, self._migrations)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._call(_sqlite_fetchall, sql, tuple(params))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._call(_sqlite_execute, sql, tuple(params))

    async def ping(self) -> None:
        await self._call(_sqlite_execute, "SELECT 1", ())

    async def _before_transaction(self) -> None:
        """Nothing to wait for: open() migrated the file before the service took calls."""

    def _dialect(self) -> tuple[Statement, Statement, Callable[[str], str]]:
        return _sqlite_fetchall, _sqlite_execute, str

    def _begin(self) -> sqlite3.Connection:
        try:
            conn = self._idle.pop() if self._idle else self._connect()
        except sqlite3.Error as exc:
            raise platform_sqlite_error(exc) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")  # the write lock now: concurrent transactions run one by one
        except sqlite3.Error as exc:
            self._idle.append(conn)
            raise platform_sqlite_error(exc) from exc
        return conn

    def _in_transaction(self, conn: sqlite3.Connection, fn: Statement, *args: Any) -> Any:
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise platform_sqlite_error(exc) from exc

    def _end(self, conn: sqlite3.Connection, commit: bool) -> None:
        try:
            if commit:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise platform_sqlite_error(exc) from exc
        finally:
            if conn.in_transaction:  # the block raised or COMMIT failed: roll back (errors must not mask it)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._idle.append(conn)

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
        self._blocking.shutdown()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await self._blocking.run(self._with_connection, fn, *args)

    def _with_connection(self, fn: Callable[..., T], *args: Any) -> T:
        # Runs in a pool thread; at most `size` threads, so at most `size` connections, one thread each.
        try:
            conn = self._idle.pop() if self._idle else self._connect()
        except sqlite3.Error as exc:
            raise platform_sqlite_error(exc) from exc
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise platform_sqlite_error(exc) from exc
        finally:  # autocommit connections stay usable after a failed statement
            self._idle.append(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = connect_sqlite(self.path)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn


def _sqlite_setup(conn: sqlite3.Connection, service: str, migrations: list[Migration]) -> int:
    _enable_wal(conn)
    return migrate_sqlite(conn, service, migrations)


def _enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switching a new file to WAL needs an exclusive lock and ignores busy_timeout: retry (replicas and
    `make up` open the same file at once)."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _sqlite_fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Row]:
    cur = conn.execute(sql, params)
    names = [column[0] for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _sqlite_execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return conn.execute(sql, params).rowcount


# --- Opening ---------------------------------------------------------------------------------------------


def pg_reachable(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S).close()
    except psycopg2.Error:
        return False
    return True


async def open_platform_db(settings: Settings, deps: Registry, *, migrations: Path) -> PlatformDb:
    """Chooses the backend (DESIGN section 4), applies `migrations`, registers dependency "sql"."""
    configured = bool(settings.postgres.dsn)
    reachable = False
    if configured and settings.process.simulation_mode is not True:
        reachable = await asyncio.to_thread(pg_reachable, settings.postgres.dsn.reveal())
    mode = select_mode(settings.process.simulation_mode, configured, reachable)
    if mode is Mode.LIVE:
        return await _open_pg(settings.postgres.dsn.reveal(), deps, migrations, reachable)
    db = SqlitePlatformDb(settings.process.data_dir / "platform.sqlite", migrations)
    await db.open()
    detail = "PostgreSQL not answering at start-up" if mode is Mode.FALLBACK else "SQLite in the data dir"
    deps.add("sql", mode, str(db.path), detail=detail, remediation=REMEDIATION, check=db.ping)
    return db


async def _open_pg(dsn: str, deps: Registry, migrations: Path, reachable: bool) -> PgPlatformDb:
    db = PgPlatformDb(dsn, migrations)
    deps.add("sql", Mode.LIVE, dsn, detail="PostgreSQL", check=db.ping)
    if not reachable:  # SIMULATION_MODE=false: stay on PostgreSQL, unhealthy, migrations run when it answers
        deps.mark("sql", False, "PostgreSQL not answering (SIMULATION_MODE=false: no fallback)")
        return db
    await db.ensure_ready()
    return db
