"""The live dry run on SQLite: which rows of a table a subject may read, update and delete, found by doing it.

The counterpart of pg_probe. One transaction, always rolled back, on a connection of its own (never one of the
pool: the probe's temporary objects, built for a policy set that may not be the stored one, must never reach a
real call), opened the way a real call of the subject is (read-only for viewers; governed, with the shadow
views, triggers, rewriting and authorizer of sqlite_policies built for the set under test and the subject,
when that set names a table):

1. BEGIN (IMMEDIATE for writers: the snapshot and the write lock are taken at once, so nothing commits between
   what is read and what is tried). The records are read plainly: the first `limit` rows by row id (a table
   WITHOUT ROWID: by primary key), one more to tell `truncated`.
2. As the subject, through the real enforcement: `SELECT <columns> FROM <table>` (read); a no-op
   `UPDATE <table> SET c = c ... RETURNING <row id>` (update: the rewrite reaches only rows the subject may read
   and update, and the triggers apply WITH CHECK) and `DELETE ... RETURNING <row id>` (delete), each inside a
   savepoint rolled back at once. The writes name the records by row id; the read cannot (the shadow view
   has no rowid), so its rows are matched to the records by value (type and value of every column): a
   policy decides on column values alone, so rows alike are decided alike. When the row id is a column
   (INTEGER PRIMARY KEY, or the key of a table WITHOUT ROWID) the read is also restricted to the records.
3. ROLLBACK, and the connection is closed.

What the writes set off happens as in a real write, inside the transaction, and is undone with it: triggers,
cascading foreign keys, constraint checks. When a set-wide write fails (a trigger or constraint refuses some
row), each row is tried alone: the ones that fail are not updatable / deletable, as a real write of them
fails. A statement refused as a whole (a tenant trigger on a governed table) reaches no row. Should a trigger
end the transaction itself (RAISE(ROLLBACK)), the probe stops: nothing ran unprotected and nothing was kept.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.core.errors import Aborted, Code, InvalidArgument, ServiceError
from services.core.policy.sql import quote_ident, render_table, sqlite_value
from services.data.model import PROBE_LIMIT, PROBE_MAX_LIMIT, Limits, Probe, ProbedRow, value_size
from services.data.sqlite_connection import DOWN, Connection
from services.data.sqlite_policies import (
    ACTIONS,
    RESERVED,
    BaseTable,
    Guard,
    Schema,
    read_schema,
    resource_of,
)
from services.data.sqlite_tokens import fold

ADMIN, WRITER, READER = "admin", "rw", "ro"
Key = tuple[Any, ...]  # a row's id: (rowid,) or its primary key
_ROWID = ("rowid", "_rowid_", "oid")
_SAVEPOINT = f"{RESERVED}_probe"
# Errors that are no verdict on a row: the probe as a whole fails (timeout, lock, I/O, resources).
_FATAL = DOWN | {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_INTERRUPT}


def probe_kind(subject: Mapping[str, Any]) -> str:
    """The database role a real call of the subject gets: admin (not governed), rw (developer), ro."""
    roles = subject.get("roles") or ()
    if "admin" in roles:
        return ADMIN
    return WRITER if "developer" in roles else READER


def _limit(limit: int) -> int:
    return max(1, min(limit or PROBE_LIMIT, PROBE_MAX_LIMIT))


@dataclass(frozen=True, slots=True)
class _Target:
    table: BaseTable
    ident: str  # the bare quoted name, as a subject writes it
    key: tuple[str, ...]  # how statements on the base table name a row (rowid, or primary key columns)
    shown: str | None  # the key as columns of the subject's rows (INTEGER PRIMARY KEY, a WITHOUT ROWID key)
    assignable: str  # a column `SET c = c` may assign (not generated)

    @property
    def key_sql(self) -> str:
        return ", ".join(k if k in _ROWID else quote_ident(k) for k in self.key)

    @property
    def columns_sql(self) -> str:
        return ", ".join(quote_ident(column) for column in self.table.columns)


@dataclass(frozen=True, slots=True)
class _Record:
    key: Key
    values: tuple[Any, ...]  # as stored, in column order
    record: dict[str, Any]  # the JSON view


def probe(
    connection: Connection, guard: Guard | None, name: str, kind: str, limit: int, limits: Limits
) -> Probe:
    """In a worker thread, on a connection opened for this probe alone (closed by the caller). guard: the set
    under test and the subject, None when the set names no table (or for an admin: not governed)."""
    conn = connection.conn
    connection.deadline = time.monotonic() + limits.timeout_ms / 1000
    try:
        with _ours(connection):
            conn.execute("BEGIN IMMEDIATE" if kind == WRITER else "BEGIN")
            target = _target(conn, read_schema(conn), name)
            governed = guard is not None and _strict(guard, target.table)
            records, truncated = _records(conn, target, _limit(limit), limits)
        if kind == ADMIN:  # tenant admins are never governed: every row, every action
            return Probe(False, [ProbedRow(r.record, True, True, True) for r in records], truncated)
        readable = _readable(connection, guard, target, records)
        writes = kind == WRITER and bool(records)  # roles first: a viewer never writes
        updatable = _touched(connection, guard, target, _update_sql(target), records) if writes else set()
        deletable = _touched(connection, guard, target, _delete_sql(target), records) if writes else set()
        rows = [
            ProbedRow(r.record, _typed(r.values) in readable, r.key in updatable, r.key in deletable)
            for r in records
        ]
        return Probe(governed, rows, truncated)
    except sqlite3.Error as exc:
        raise connection._error(exc, limits) from exc
    finally:
        connection.deadline = float("inf")
        with _ours(connection), contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")


@contextlib.contextmanager
def _ours(connection: Connection) -> Iterator[None]:
    """Our own statements (the transaction, the plain reads): the policy authorizer lets them through."""
    shield = connection.shield
    if shield is None:
        yield
        return
    shield.internal = True
    try:
        yield
    finally:
        shield.internal = False


# --- The table --------------------------------------------------------------------------------------------


def _target(conn: sqlite3.Connection, schema: Schema, name: str) -> _Target:
    """The tenant's table of that name; InvalidArgument naming it when it cannot be probed."""
    if not name:
        raise InvalidArgument(
            'name the table to dry-run the policies on (its bare name, e.g. "notes")', field="table"
        )
    table = schema.tables.get(fold(name))
    if table is None:
        if schema.routines.get(fold(name)) == "view":
            raise InvalidArgument(
                f'"{name}" is a view, not a table (policies govern tables; a view reads through its tables)',
                field="table",
                table=name,
            )
        raise InvalidArgument(f'table "{name}" does not exist in this tenant', field="table", table=name)
    if not table.columns:
        raise InvalidArgument(
            f'table "{table.name}" has no columns a policy can see', field="table", table=table.name
        )
    without_rowid = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?", (table.name,)
    ).fetchone()[0]
    if not table.key or (table.key[0] not in _ROWID and not without_rowid):
        raise InvalidArgument(
            f'table "{table.name}" has columns named rowid, _rowid_ and oid, which hide the row ids a dry run '
            "names rows by: rename one of them",
            field="table",
            table=table.name,
        )
    ident = quote_ident(table.name)
    if without_rowid:
        shown: str | None = ", ".join(quote_ident(k) for k in table.key)
    else:
        integer_key = _integer_key(conn, table)
        shown = quote_ident(integer_key) if integer_key is not None else None
    return _Target(table, ident, table.key, shown, _assignable(conn, table))


def _integer_key(conn: sqlite3.Connection, table: BaseTable) -> str | None:
    """The INTEGER PRIMARY KEY column, which is the row id (not so when declared DESC: then it has an index)."""
    keys = conn.execute(
        "SELECT name, type FROM pragma_table_xinfo(?, 'main') WHERE pk > 0", (table.name,)
    ).fetchall()
    if len(keys) != 1 or keys[0][1].upper() != "INTEGER":
        return None
    indexed = conn.execute(
        "SELECT count(*) FROM pragma_index_list(?, 'main') WHERE origin = 'pk'", (table.name,)
    ).fetchone()[0]
    return None if indexed else keys[0][0]


def _assignable(conn: sqlite3.Connection, table: BaseTable) -> str:
    """A column that takes its own value (generated ones take none), preferably not part of the key."""
    row = conn.execute(
        "SELECT name FROM pragma_table_xinfo(?, 'main') WHERE hidden = 0 ORDER BY pk > 0, cid LIMIT 1",
        (table.name,),
    ).fetchone()
    if row is None:
        raise InvalidArgument(
            f'table "{table.name}" has no column an UPDATE can assign', field="table", table=table.name
        )
    return quote_ident(row[0])


def _strict(guard: Guard, table: BaseTable) -> bool:
    """Whether the set governs the table; rendered strictly, as storing the set would: InvalidArgument names
    the table and column a rule cannot be compiled for."""
    resource = resource_of(guard.policies, table.name)
    if resource is None:
        return False
    for action in ACTIONS:
        render_table(guard.policies, resource, table.columns, action, "sqlite", guard.subject, strict=True)
    return True


def _records(
    conn: sqlite3.Connection, target: _Target, limit: int, limits: Limits
) -> tuple[list[_Record], bool]:
    """Plainly (no policy): the first `limit` rows by row id, within the response's byte budget; whether
    there were more."""
    width = len(target.key)
    rows = conn.execute(
        f"SELECT {target.key_sql}, {target.columns_sql} FROM main.{target.ident} ORDER BY {target.key_sql} "
        "LIMIT ?",
        (limit + 1,),
    ).fetchall()
    types = list(target.table.columns.values())
    records: list[_Record] = []
    size = 0
    for row in rows[:limit]:
        values = tuple(row[width:])
        size += sum(value_size(value) for value in values)
        if size > limits.max_bytes:
            return records, True
        record = {c: sqlite_value(t, v) for c, t, v in zip(target.table.columns, types, values, strict=True)}
        records.append(_Record(tuple(row[:width]), values, record))
    return records, len(rows) > limit


# --- As the subject ---------------------------------------------------------------------------------------


def _typed(values: Sequence[Any]) -> tuple[tuple[type, Any], ...]:
    """A row as a match key: type and value of each column (1 and 1.0, '1' and 1 stay apart)."""
    return tuple((type(value), value) for value in values)


def _among(key_sql: str, records: Sequence[_Record]) -> tuple[str, list[Any]]:
    """`(<row id>) IN (VALUES (?, ...), ...)` for the records, and its parameters."""
    row = "(" + ", ".join("?" * len(records[0].key)) + ")"
    condition = f"({key_sql}) IN (VALUES {', '.join([row] * len(records))})"
    return condition, [value for r in records for value in r.key]


def _readable(
    connection: Connection, guard: Guard | None, target: _Target, records: Sequence[_Record]
) -> set[tuple[tuple[type, Any], ...]]:
    """The records the subject's SELECT returns (as match keys). A SELECT refused as a whole reads none."""
    if not records:
        return set()
    sql, params = f"SELECT {target.columns_sql} FROM {target.ident}", []
    if target.shown is not None:  # the key is a column of the subject's rows: look at the records only
        condition, params = _among(target.shown, records)
        sql += f" WHERE {condition}"
    wanted = {_typed(r.values) for r in records}
    found: set[tuple[tuple[type, Any], ...]] = set()
    try:
        cursor = connection.conn.execute(_as_subject(connection, guard, sql), params)
        for row in cursor:
            typed = _typed(row)
            if typed in wanted:
                found.add(typed)
    except (sqlite3.Error, ServiceError) as exc:
        _verdict(connection, exc)
        return set()
    return found


def _update_sql(target: _Target) -> str:
    column = target.assignable
    return f"UPDATE {target.ident} SET {column} = {column} WHERE {{rows}}{_returning(target)}"


def _delete_sql(target: _Target) -> str:
    return f"DELETE FROM {target.ident} WHERE {{rows}}{_returning(target)}"


def _returning(target: _Target) -> str:
    """Which rows a write reached; virtual tables have no RETURNING: their rows are tried one by one."""
    return "" if target.table.kind == "virtual" else f" RETURNING {target.key_sql}"


def _touched(
    connection: Connection, guard: Guard | None, target: _Target, template: str, records: Sequence[_Record]
) -> set[Key]:
    """The records a write as the subject reaches, each attempt undone at once. When the write fails as a
    whole, each record is tried alone: the ones that fail are not reached, as a real write of them fails."""
    if " RETURNING " in template:
        try:
            return _try(connection, guard, target, template, records)
        except (sqlite3.Error, ServiceError) as exc:
            _verdict(connection, exc)
        if len(records) == 1:
            return set()
    reached: set[Key] = set()
    for record in records:
        try:
            reached |= _try(connection, guard, target, template, [record])
        except (sqlite3.Error, ServiceError) as exc:
            _verdict(connection, exc)
    return reached


def _try(
    connection: Connection, guard: Guard | None, target: _Target, template: str, records: Sequence[_Record]
) -> set[Key]:
    condition, params = _among(target.key_sql, records)
    sql = _as_subject(connection, guard, template.format(rows=condition))  # before the savepoint: objects
    with _ours(connection):  # it installs belong to the probe's transaction, not to this attempt
        connection.conn.execute(f"SAVEPOINT {_SAVEPOINT}")
    try:
        cursor = connection.conn.execute(sql, params)
        if cursor.description is None:  # no RETURNING: one record, reached when the write changed a row
            return {records[0].key} if cursor.rowcount > 0 else set()
        return {tuple(row) for row in cursor.fetchall()}
    finally:
        _undo(connection)


def _undo(connection: Connection) -> None:
    """Back to the savepoint, still inside the probe's transaction (or the probe stops)."""
    conn = connection.conn
    with _ours(connection):
        if conn.in_transaction:
            conn.execute(f"ROLLBACK TO {_SAVEPOINT}")
            conn.execute(f"RELEASE {_SAVEPOINT}")
    _still_open(connection)


def _as_subject(connection: Connection, guard: Guard | None, sql: str) -> str:
    """The statement as a real call of the subject runs it: its objects in place, its text checked and
    rewritten (what the authorizer refuses, it refuses while the statement runs)."""
    _still_open(connection)
    return connection._governed(sql, guard)


def _verdict(connection: Connection, exc: BaseException) -> None:
    """A failed statement of the subject: a verdict on its rows (they are not reached), unless the failure
    says nothing about them (a timeout, a lock, I/O), or ended the probe's transaction: then it is raised."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _FATAL:
            raise exc
    elif exc.code != Code.PERMISSION_DENIED:  # ServiceError: prepare refused the statement (403), or worse
        raise exc
    if connection.shield is not None:
        connection.shield.denial = None  # told by this verdict: not the reason of a later failure
    _still_open(connection)


def _still_open(connection: Connection) -> None:
    if not connection.conn.in_transaction:
        raise Aborted(
            "a trigger of the tenant ended the dry run's transaction (RAISE(ROLLBACK)); nothing was written. "
            "Dry-run a table whose triggers do not roll back"
        )
