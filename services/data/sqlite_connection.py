"""One tenant connection on SQLite: the authorizer, limits and timeout every tenant statement runs under.

Every connection denies ATTACH/DETACH (and so VACUUM INTO, which attaches its target), extension loading and
every pragma outside a short safe list, with SQLITE_LIMIT_ATTACHED = 0 as a second lock; a progress handler
enforces the statement timeout; viewers' connections are read-only (`mode=ro` URI plus query_only). A governed
connection also carries the Shield of sqlite_policies. sqlite_backend pools these per tenant; sqlite_probe
opens one of its own.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from services.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.data.model import (
    Column,
    ForeignKey,
    Limits,
    Plan,
    QueryResult,
    Rows,
    Table,
    TableColumn,
    collect,
)
from services.data.sqlite_policies import REFUSE_FUNCTION, TEMP_CREATES, Guard, Shield
from services.data.sqltext import reads_only

BACKEND = "sqlite"
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


class Connection:
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
    if primary in DOWN:
        return Unavailable(f"tenant database is not available: {message}")
    if code is None:
        return InvalidArgument(message)
    return InvalidArgument(message, sqlite_error=exc.sqlite_errorname)


# Errors that say the tenant's file is unusable (not that the statement is wrong).
DOWN = frozenset(
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
        sqlite3.SQLITE_NOMEM,
    }
)
