"""Tenant SQL on SQLite (the embedded default): one file per tenant, isolation enforced by SQLite itself.

Each tenant has data_dir/tenants/<tenant>.sqlite. Viewers open it read-only (`mode=ro` URI plus query_only),
so no statement of theirs can write. Every connection carries an authorizer that denies ATTACH/DETACH (and
so VACUUM INTO, which attaches its target), extension loading and every pragma outside a short safe list,
with SQLITE_LIMIT_ATTACHED = 0 as a second lock. A progress handler enforces the statement timeout.
Connections are reused per tenant and role; at most PER_TENANT run at once for one tenant, so a slow tenant
cannot take every worker thread.

Policies: developers and viewers of a tenant whose policies govern tables run on connections of their own
(never shared with admins or ungoverned callers), which carry the shadow views, triggers and authorizer
checks of sqlite_policies for the caller's subject; a tenant without table policies pays one revision read.
The live dry run (sqlite_probe) runs the same enforcement on a connection of its own, never pooled.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from services.core.blocking import Blocking
from services.core.db import PlatformDb
from services.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.core.policy import PolicySet, compile_set
from services.core.policy.book import PolicyBook
from services.data.model import (
    Caller,
    Column,
    ForeignKey,
    Json,
    Limits,
    Plan,
    Probe,
    QueryResult,
    Rows,
    Table,
    TableColumn,
    TenantSql,
    checked_tenant,
    collect,
)
from services.data.sqlite_policies import (
    REFUSE_FUNCTION,
    TEMP_CREATES,
    Guard,
    Shield,
    compile_check,
    governs_tables,
    read_schema,
)
from services.data.sqlite_probe import ADMIN, WRITER, probe, probe_kind
from services.data.sqltext import Statement, reads_only, scan

T = TypeVar("T")
BACKEND = "sqlite"
PER_TENANT = 4
WORKERS = 8
MAX_OPEN_TENANTS = 64
PROGRESS_STEPS = 1000  # VM instructions between two deadline checks
BUSY_TIMEOUT_MS = 5000
MAX_VALUE_BYTES = 16 * 1024 * 1024
MAX_SQL_BYTES = 1024 * 1024

# Pragmas a tenant may run with any argument (they only read, or touch nothing outside its own file).
_PRAGMAS_ANY = frozenset(
    [
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
        "collation_list",
        "function_list",
        "module_list",
        "pragma_list",
        "compile_options",
        "user_version",
        "application_id",
        "optimize",
    ]
)
# Pragmas a tenant may read but not set.
_PRAGMAS_READ = frozenset(
    [
        "encoding",
        "page_count",
        "page_size",
        "freelist_count",
        "data_version",
        "foreign_keys",
        "schema_version",
        "journal_mode",
        "auto_vacuum",
        "busy_timeout",
        "query_only",
        "recursive_triggers",
        "cache_size",
        "max_page_count",
    ]
)
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
_DENIED_TABLES = frozenset({"sqlite_dbpage"})  # raw page access, when compiled in
_NOT_READS = frozenset(range(1, 19)) | {23, 24, 25, 26, 27, 28, 29, 30, 32}  # every action that changes state


def _base_decision(action: int, arg1: str | None, arg2: str | None) -> int:
    """What every tenant connection refuses: other files, extensions, most pragmas."""
    if action == sqlite3.SQLITE_PRAGMA:
        allowed = arg1 in _PRAGMAS_ANY or (arg1 in _PRAGMAS_READ and arg2 is None)
        return sqlite3.SQLITE_OK if allowed else sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH) or arg1 in _DENIED_TABLES:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class _Connection:
    """One tenant connection (one role; governed or not), used by one worker thread at a time.

    A governed connection (shield set) prepares every statement anew (no statement cache: each is authorized
    for the call's own subject and schema), fires delete triggers for the rows REPLACE removes
    (recursive_triggers), and keeps its temp schema in memory.
    """

    def __init__(self, path: Path, writable: bool, governed: bool = False) -> None:
        uri = f"file:{quote(str(path))}?mode={'rwc' if writable else 'ro'}"
        cached = 0 if governed else 128
        self.conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, cached_statements=cached
        )
        self.shield = Shield(writable) if governed else None
        self.recorder: list[int] | None = None
        self.made_temp = False  # a temp object was created on this connection by a caller
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self.conn.execute("PRAGMA foreign_keys = ON")
        if self.shield is not None:
            self.conn.execute("PRAGMA recursive_triggers = ON")
            self.conn.execute("PRAGMA temp_store = MEMORY")
            self.conn.create_function(REFUSE_FUNCTION, 1, self.shield.refuse)
        if not writable:
            self.conn.execute("PRAGMA query_only = ON")
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        self.conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
        self.conn.set_authorizer(self._authorize)
        self.deadline = math.inf
        self.conn.set_progress_handler(lambda: time.monotonic() > self.deadline, PROGRESS_STEPS)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: Any) -> int:
        if self.shield is not None and self.shield.internal:
            return sqlite3.SQLITE_OK  # our own statements (sqlite_policies installs the caller's objects)
        if self.recorder is not None and action in _NOT_READS:
            self.recorder.append(action)
        if action in TEMP_CREATES:
            self.made_temp = True
        decision = _base_decision(action, arg1, arg2)
        if decision != sqlite3.SQLITE_OK or self.shield is None:
            return decision
        return self.shield.authorize(action, arg1, arg2, db, source)

    def _governed(self, sql: str, guard: Guard | None) -> str:
        """The statement to run: for a governed call, after this caller's objects are in place."""
        if self.shield is None or guard is None:
            return sql
        return self.shield.prepare(self.conn, guard, sql)

    def _error(self, exc: sqlite3.Error, limits: Limits) -> ServiceError:
        if self.shield is not None and self.shield.denial:
            return PermissionDenied(self.shield.denial)
        return tenant_error(exc, limits)

    def query(
        self, sql: str, params: list[Any] | dict[str, Any], limits: Limits, guard: Guard | None = None
    ) -> QueryResult:
        started = time.perf_counter()
        sql = self._governed(sql, guard)
        self.deadline = time.monotonic() + limits.timeout_ms / 1000
        changes = self.conn.total_changes
        try:
            cursor = self.conn.execute(sql, params)
            try:
                description = cursor.description
                rows = collect(cursor.fetchmany, limits) if description else Rows(limits)
                affected = cursor.rowcount
            finally:
                cursor.close()  # ends the statement, so its implicit transaction commits now
        except sqlite3.Error as exc:
            raise self._error(exc, limits) from exc
        finally:
            self.deadline = math.inf
            self._end_transaction()
        if affected < 0 or description:  # RETURNING or a read: count what the statement changed
            affected = self.conn.total_changes - changes
        columns = [Column(d[0], _storage_class(rows.rows, i)) for i, d in enumerate(description or ())]
        elapsed = (time.perf_counter() - started) * 1000
        return QueryResult(columns, rows.rows, rows.truncated, affected, elapsed, BACKEND)

    def _end_transaction(self) -> None:
        """Each call is its own unit: a BEGIN left open by a caller never outlives the call."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def explain(
        self, sql: str, params: list[Any] | dict[str, Any], limits: Limits, guard: Guard | None = None
    ) -> Plan:
        actions: list[int] = []
        routed = self._governed(sql, guard)
        self.recorder = actions  # SQLite reports what the statement would do
        self.deadline = time.monotonic() + limits.timeout_ms / 1000
        try:
            rows = self.conn.execute(f"EXPLAIN QUERY PLAN {routed}", params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc, limits) from exc
        finally:
            self.deadline = math.inf
            self.recorder = None
            self._end_transaction()
        read_only = not actions and reads_only(sql, "sqlite") is not False
        return Plan(_plan_text(rows), read_only, BACKEND)

    def list_tables(self, limits: Limits) -> list[Table]:
        self.deadline = time.monotonic() + limits.timeout_ms / 1000
        try:
            columns, keys = self.conn.execute(_COLUMNS).fetchall(), _foreign_keys(self.conn)
        except sqlite3.Error as exc:
            raise tenant_error(exc, limits) from exc
        finally:
            self.deadline = math.inf
        return _tables(columns, keys)

    def close(self) -> None:
        self.conn.close()


def _tables(columns: list[tuple[Any, ...]], foreign_keys: list[tuple[Any, ...]]) -> list[Table]:
    tables: dict[str, Table] = {}
    keys: dict[str, list[tuple[int, str]]] = {}
    for name, column, type_, notnull, default, pk in columns:
        table = tables.setdefault(name, Table(name))
        table.columns.append(
            TableColumn(column, type_ or "", not notnull and not pk, bool(pk), default or "")
        )
        if pk:  # pk is the column's 1-based position in the primary key
            keys.setdefault(name, []).append((pk, column))
    for name, positions in keys.items():
        tables[name].primary_key = [column for _, column in sorted(positions)]
    for name, _, target, sources, targets in foreign_keys:
        # A key naming no columns references the target's primary key.
        referenced = targets if all(targets) else tables.get(target, Table(target)).primary_key
        tables[name].foreign_keys.append(ForeignKey(sources, target, list(referenced)))
    return list(tables.values())


_COLUMNS = """
SELECT m.name, p.name, p.type, p."notnull", p.dflt_value, p.pk
FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p
WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
ORDER BY m.name, p.cid
"""
_FOREIGN_KEYS = """
SELECT m.name, f.id, f."table", f."from", f."to"
FROM sqlite_master AS m JOIN pragma_foreign_key_list(m.name) AS f
WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
ORDER BY m.name, f.id, f.seq
"""


def _foreign_keys(conn: sqlite3.Connection) -> list[tuple[str, int, str, list[str], list[str | None]]]:
    keys: dict[tuple[str, int], tuple[str, int, str, list[str], list[str | None]]] = {}
    for name, key_id, target, source, referenced in conn.execute(_FOREIGN_KEYS):
        entry = keys.setdefault((name, key_id), (name, key_id, target, [], []))
        entry[3].append(source)
        entry[4].append(referenced)
    return list(keys.values())


def _storage_class(rows: list[tuple[Any, ...]], index: int) -> str:
    """SQLite has no column type for an expression: name the storage class of the first non-NULL value."""
    for row in rows:
        value = row[index]
        if value is not None:
            return _CLASS_NAMES.get(type(value), "")
    return ""


_CLASS_NAMES = {int: "integer", float: "real", str: "text", bytes: "blob"}


def _plan_text(rows: list[tuple[Any, ...]]) -> str:
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + str(detail))
    return "\n".join(lines)


def tenant_error(exc: sqlite3.Error, limits: Limits) -> ServiceError:
    """The caller's view of a failed statement: never a raw exception."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if code is not None else None
    message = str(exc)
    if primary == sqlite3.SQLITE_INTERRUPT:
        return DeadlineExceeded(f"statement cancelled: it ran longer than {limits.timeout_ms} ms")
    if primary == sqlite3.SQLITE_CONSTRAINT and message.startswith("denied by policy:"):
        return PermissionDenied(message)  # a policy check (sqlite_policies) refused the row
    if primary in (sqlite3.SQLITE_AUTH, sqlite3.SQLITE_READONLY) or message.startswith("not authorized"):
        return PermissionDenied(f"not allowed: {message}", sqlite_error=getattr(exc, "sqlite_errorname", ""))
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return Unavailable(f"tenant database is busy, retry: {message}")
    if primary in _DOWN:
        return Unavailable(f"tenant database is not available: {message}")
    if code is None:
        return InvalidArgument(message)
    return InvalidArgument(message, sqlite_error=exc.sqlite_errorname)


_DOWN = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_NOMEM,
}


class _Tenant:
    """Open connections of one tenant, per role and governance, and the slots that bound its concurrency."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.slots = asyncio.Semaphore(PER_TENANT)
        self.idle: dict[tuple[bool, bool], list[_Connection]] = {
            (writable, governed): [] for writable in (True, False) for governed in (True, False)
        }
        self.closed = False

    def run(self, writable: bool, guard: Guard | None, keep: bool, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: fn(connection, *args) on a reused connection of the role (for a governed call,
        preferably one already set up for the same subject). keep=False: a connection on which the call
        made temporary objects is closed afterwards, so they never reach another caller."""
        pool = self.idle[(writable, guard is not None)]
        try:
            conn = _take(pool, guard) if pool else _Connection(self.path, writable, guard is not None)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the tenant database: {exc}") from exc
        conn.made_temp = False
        try:
            return fn(conn, *args)
        finally:  # more than PER_TENANT exist only after a cancelled call: do not keep the extra
            if self.closed or len(pool) >= PER_TENANT or (conn.made_temp and not keep):
                conn.close()
            else:
                pool.append(conn)

    def alone(self, writable: bool, governed: bool, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: fn(connection, *args) on a connection of its own, closed afterwards (the live
        dry run: what it builds on the connection never reaches a real call)."""
        try:
            conn = _Connection(self.path, writable, governed)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the tenant database: {exc}") from exc
        try:
            return fn(conn, *args)
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for pool in self.idle.values():
            while pool:
                pool.pop().close()


def _take(pool: list[_Connection], guard: Guard | None) -> _Connection:
    """The most recently used connection, or for a governed call the last one set up for its subject."""
    if guard is not None:
        key = guard.key
        for index in range(len(pool) - 1, -1, -1):
            shield = pool[index].shield
            if shield is not None and shield.key is not None and shield.key[:2] == key:
                return pool.pop(index)
    return pool.pop()


class SqliteTenants(TenantSql):
    backend = BACKEND

    def __init__(self, folder: Path, db: PlatformDb, book: PolicyBook | None = None) -> None:
        self._folder = folder
        self._db = db
        self._book = book if book is not None else PolicyBook(db)
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._blocking = Blocking("data-sqlite", WORKERS)
        self._provisioning = asyncio.Lock()

    async def query(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> QueryResult:
        statement = scan(sql)
        guard = await self._guard(caller)
        bound = _bind(statement, params)
        return await self._run(caller, guard, _Connection.query, statement.text, bound, limits, guard)

    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]:
        # The schema is no secret a policy keeps: listed from a connection without shadow views, so governed
        # tables show their real keys and defaults.
        return await self._run(caller, None, _Connection.list_tables, limits)

    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan:
        statement = scan(sql)
        guard = await self._guard(caller)
        bound = _bind(statement, params)
        return await self._run(caller, guard, _Connection.explain, statement.text, bound, limits, guard)

    async def apply_policies(
        self, tenant: str, documents: list[Mapping[str, Any]], revision: int
    ) -> list[str]:
        """ApplyPolicies on SQLite: a compile check of the whole set against the tenant's tables (the policies
        are read per call, so there is nothing to store); the tables governed by it. InvalidArgument names the
        policy, table and column a rule cannot be compiled for."""
        policies = compile_set(documents, revision)
        subject = {"sub": "", "tenant": tenant, "roles": []}
        admin = Caller(checked_tenant(tenant), True)
        return await self._run(admin, None, _compile_check, policies, subject)

    async def probe_policies(
        self,
        tenant: str,
        documents: list[Mapping[str, Any]],
        table: str,
        subject: Mapping[str, Any],
        limit: int,
        limits: Limits,
    ) -> Probe:
        """The live dry run (sqlite_probe): as the subject, under `documents` (stored or not), on a connection
        of its own, in a transaction that is rolled back. InvalidArgument names an invalid part of a policy,
        an unknown table, or the table and column a rule cannot be compiled for."""
        policies = compile_set(documents)
        kind = probe_kind(subject)
        guard = Guard(policies, dict(subject)) if kind != ADMIN and governs_tables(policies) else None
        opened = self._tenants.get(tenant) or await self._open(tenant)
        self._tenants.move_to_end(tenant)
        async with opened.slots:
            return await self._blocking.run(
                opened.alone, kind == WRITER, guard is not None, probe, guard, table, kind, limit, limits
            )

    async def close(self) -> None:
        for tenant in self._tenants.values():
            await self._blocking.run(tenant.close)
        self._tenants.clear()
        self._blocking.shutdown()

    async def _guard(self, caller: Caller) -> Guard | None:
        """What governs the call: None for admins and for tenants whose policies name no table."""
        if not caller.governed:
            return None
        policies: PolicySet = await self._book.current(caller.tenant)
        if not governs_tables(policies):
            return None
        return Guard(policies, dict(caller.subject))

    async def _run(self, caller: Caller, guard: Guard | None, fn: Callable[..., T], *args: Any) -> T:
        tenant = self._tenants.get(caller.tenant) or await self._open(caller.tenant)
        self._tenants.move_to_end(caller.tenant)
        keep = not caller.governed  # temp objects of developers and viewers never outlive their call
        async with tenant.slots:
            return await self._blocking.run(tenant.run, caller.writable, guard, keep, fn, *args)

    async def _open(self, name: str) -> _Tenant:
        """First use of a tenant in this process: create its file (idempotent) and record it."""
        async with self._provisioning:
            if name in self._tenants:
                return self._tenants[name]
            path = self._folder / f"{checked_tenant(name)}.sqlite"
            await self._blocking.run(_create_file, path)
            await self._db.execute(_RECORD, (name, BACKEND, LAYOUT))
            tenant = self._tenants[name] = _Tenant(path)
            while len(self._tenants) > MAX_OPEN_TENANTS:  # close the least recently used tenant's files
                await self._blocking.run(self._tenants.popitem(last=False)[1].close)
            return tenant


def _compile_check(conn: _Connection, policies: PolicySet, subject: Mapping[str, Any]) -> list[str]:
    try:
        return compile_check(conn.conn, policies, read_schema(conn.conn), subject)
    except sqlite3.Error as exc:
        raise InvalidArgument(f"a policy does not compile on this tenant's tables: {exc}") from exc
    finally:
        conn._end_transaction()


LAYOUT = 1  # bump when provisioning changes; recorded per tenant in data_tenants
_RECORD = """
INSERT INTO data_tenants (tenant, backend, layout) VALUES (?, ?, ?)
ON CONFLICT (tenant) DO UPDATE SET backend = excluded.backend, layout = excluded.layout
"""


def _create_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
        finally:
            conn.close()
        os.chmod(path, 0o600)
    except (sqlite3.Error, OSError) as exc:
        raise Unavailable(f"cannot create the tenant database: {exc}") from exc


def _bind(statement: Statement, params: list[Any]) -> list[Any] | dict[str, Any]:
    """$N parameters bind by number, as on PostgreSQL (SQLite would number them by first appearance);
    `?` parameters bind in order, and SQLite checks their count."""
    values = [_param(p) for p in params]
    if not statement.params:
        return values
    if statement.param_count != len(values):
        raise InvalidArgument(
            f"the statement uses {statement.param_count} parameter(s) ($1..$N) but {len(values)} were given"
        )
    return {str(number): value for number, value in enumerate(values, 1)}


def _param(value: Any) -> Any:
    """SQLite has no decimal or JSON type: both travel as text (bool binds as an int)."""
    if isinstance(value, Json):
        return orjson.dumps(value.value).decode()
    return str(value) if isinstance(value, Decimal) else value
