"""One call on one tenant connection on PostgreSQL: the transaction, the statement, its rows, its errors.

Every call is one transaction with SET LOCAL statement_timeout; a row-returning query is read through a
cursor in batches sized to the row cap and byte budget, so a huge result never reaches this process.
Afterwards the session is reset (settings, advisory locks, temp tables, prepared statements), so one call never
leaks state into the next.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext

from services.core.db import first_line, pg_unavailable
from services.core.errors import (
    Aborted,
    DeadlineExceeded,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.data import pg_rls
from services.data.model import (
    Caller,
    Column,
    ForeignKey,
    Json,
    Limits,
    Plan,
    QueryResult,
    Rows,
    Table,
    TableColumn,
    collect,
)
from services.data.sqltext import Rendered, Statement, reads_only, render

BACKEND = "postgresql"
_CURSOR = "lp_rows"
# Statements that DECLARE ... CURSOR FOR accepts (a data-modifying WITH falls back to a plain execute).
_CURSORABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_EXPLAINABLE = _CURSORABLE | {"INSERT", "UPDATE", "DELETE", "MERGE", "EXECUTE", "DECLARE", "CREATE"}
# Everything a statement may leave behind in the session, cleared inside the same round trip as COMMIT.
# Deferred constraint triggers fire now, while the caller's claims still hold, not at COMMIT after the reset.
_IMMEDIATE = "SET CONSTRAINTS ALL IMMEDIATE"
_RESET = "RESET ALL; SELECT pg_advisory_unlock_all(); CLOSE ALL; DEALLOCATE ALL; UNLISTEN *; DISCARD TEMP"
_AFFECTING = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})


def role_kind(caller: Caller) -> str:
    """Which role runs the caller's SQL: tenant admins (never governed) their own, then by writability."""
    if caller.writable and not caller.governed and "admin" in caller.subject.get("roles", ()):
        return "admin"
    return "rw" if caller.writable else "ro"


@dataclass(frozen=True, slots=True)
class Session:
    """One call's identity in the database: the role it runs as and the claims its transaction carries."""

    kind: str
    key: bytes  # the tenant's claims key
    claims: str  # the subject as JSON

    @property
    def writable(self) -> bool:
        return self.kind != "ro"


# --- Value mapping: what psycopg2 returns for each type (registered on tenant connections only) --------


_HOURS_OFFSET = re.compile(r"([+-]\d\d)((?: BC)?)$")


def _timestamp(value: str | None, cur: Any) -> str | None:
    """PostgreSQL's ISO style -> RFC 3339: a "T" between date and time, "+00" offsets as "+00:00"."""
    if value is None:
        return None
    return _HOURS_OFFSET.sub(r"\1:00\2", value.replace(" ", "T", 1))


def _text(value: str | None, cur: Any) -> str | None:
    return value


def _json(value: str | None, cur: Any) -> Json | None:
    return None if value is None else Json(orjson.loads(value))


def _bytea(value: str | None, cur: Any) -> bytes | None:
    return None if value is None else bytes(psycopg2.BINARY(value, cur))


def _casters() -> list[Any]:
    scalar = [
        ((1114, 1184, 1266), "LP_TIMESTAMP", _timestamp, (1115, 1185, 1270)),
        ((1082, 1083, 1186), "LP_TEXT", _text, (1182, 1183, 1187)),
        ((3904, 3906, 3908, 3910, 3912, 3926), "LP_RANGE", _text, (3905, 3907, 3909, 3911, 3913, 3927)),
        ((114, 3802), "LP_JSON", _json, (199, 3807)),
        ((17,), "LP_BYTEA", _bytea, (1001,)),
    ]
    casters = []
    for oids, name, fn, array_oids in scalar:
        caster = ext.new_type(oids, name, fn)
        casters += [caster, ext.new_array_type(array_oids, f"{name}[]", caster)]
    return casters


_CASTERS = _casters()


class TenantConnection(ext.connection):
    """A tenant session: our value mapping, autocommit (each call writes its own BEGIN ... COMMIT).

    `pending`: the last call's DDL took a table into governance or changed a governed one (pg_rls).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for caster in _CASTERS:
            ext.register_type(caster, self)
        self.autocommit = True
        self.pending = False


_TYPE_NAMES: dict[int, str] = {
    16: "boolean", 17: "bytea", 19: "name", 20: "bigint", 21: "smallint", 23: "integer", 25: "text",
    26: "oid", 114: "json", 700: "real", 701: "double precision", 705: "unknown", 1042: "character",
    1043: "character varying", 1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz",
    1186: "interval", 1266: "timetz", 1700: "numeric", 2950: "uuid", 3802: "jsonb", 869: "inet",
}  # fmt: skip


def _type_names(cur: ext.cursor, oids: list[int]) -> list[str]:
    """Type names of result columns; unknown ones are looked up once per process."""
    missing = [oid for oid in oids if oid not in _TYPE_NAMES]
    if missing:
        cur.execute("SELECT oid, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)", (missing,))
        _TYPE_NAMES.update(cur.fetchall())
    return [_TYPE_NAMES.get(oid, str(oid)) for oid in oids]


def _literal(cur: ext.cursor, value: Any) -> str:
    """A parameter as a SQL literal, quoted by the driver, parenthesized so it binds like a value."""
    if isinstance(value, Json):
        value = orjson.dumps(value.value).decode()  # an untyped literal: PostgreSQL infers json/jsonb
    return f"({cur.mogrify('%s', (value,)).decode()})"


# --- Errors ---------------------------------------------------------------------------------------------


class Stale(Exception):
    """The pooled connection was dead before our statement ran: safe to retry on a fresh one."""


def tenant_error(exc: psycopg2.Error, limits: Limits, rendered: Rendered | None, offset: int) -> ServiceError:
    """The caller's view of a failed statement, with PostgreSQL's message, SQLSTATE and position."""
    code = exc.pgcode or ""
    diag = exc.diag
    message = diag.message_primary or first_line(exc)
    details: dict[str, Any] = {"sqlstate": code} if code else {}
    if diag.statement_position and rendered is not None and int(diag.statement_position) > offset:
        details["position"] = rendered.original_position(int(diag.statement_position) - offset)
    if diag.message_hint:
        details["hint"] = diag.message_hint
    if code == "57014":
        return DeadlineExceeded(f"statement cancelled: it ran longer than {limits.timeout_ms} ms", **details)
    if code == "42501" and "row-level security" in message:
        return PermissionDenied(_policy_outcome(message), **details)
    if code in ("42501", "25006"):
        return PermissionDenied(message, **details)
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and not code:
        return pg_unavailable("PostgreSQL connection lost", exc)
    if not code and "COPY" in message:  # the driver refuses COPY TO STDOUT / FROM STDIN itself
        return InvalidArgument("COPY to or from the client is not supported; use SELECT/INSERT")
    # Contention (40xxx deadlock or serialization failure, 55P03 lock not available): the transaction rolled
    # back whole, so ABORTED (409) tells the client a retry is safe; only the server failing is Unavailable.
    if code.startswith("40") or code == "55P03":
        return Aborted(f"conflict with a concurrent transaction: {message}", **details)
    if code.startswith(("08", "53", "57P", "58")):
        return Unavailable(f"PostgreSQL could not run the statement: {message}", **details)
    return InvalidArgument(message, **details)


_NEW_ROW = re.compile(r'new row violates row-level security policy (?:"lp_([a-z]+)_deny" )?for table "(.*)"')
_ROW_SECURITY_OFF = re.compile(r'query would be affected by row-level security policy for table "(.*)"')


def _policy_outcome(message: str) -> str:
    """PostgreSQL's RLS refusal in the caller's words: the policy outcome, never a value of the row."""
    if match := _NEW_ROW.match(message):
        action, table = match.groups()
        if action:
            return f'denied by policy: a deny rule for {action} on table "{table}" matches the row written'
        return (
            f'denied by policy: no rule lets you write this row to table "{table}" (an insert must be a row '
            "you may insert; an update must leave a row you may update)"
        )
    if match := _ROW_SECURITY_OFF.match(message):
        return f'denied by policy: table "{match.group(1)}" is governed, row_security cannot be switched off'
    return f"denied by policy: {message}"


# --- Work done in a worker thread, on one tenant connection ---------------------------------------------


def _begin(cur: ext.cursor, session: Session, limits: Limits, writable: bool | None = None) -> str:
    """BEGIN, the timeout and the verified claims: all in the call's first round trip."""
    read_write = session.writable if writable is None else writable
    return (
        f"BEGIN{'' if read_write else ' READ ONLY'}; SET LOCAL statement_timeout = {int(limits.timeout_ms)}; "
        + pg_rls.set_claims(cur, session.key, session.claims, limits.timeout_ms)
    )


def _first(cur: ext.cursor, text: str) -> None:
    """The call's first round trip; a dead connection here means nothing ran."""
    try:
        cur.execute(text)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        if cur.connection.closed:
            raise Stale from exc
        raise


def _finish(cur: ext.cursor, ok: bool, session: Session | None = None) -> None:
    """COMMIT (or ROLLBACK) and the session reset, one round trip. After a write that committed, the same
    round trip asks whether its DDL took a table into governance (or changed one): see TenantConnection."""
    if ok and session is not None and session.writable:
        cur.execute(f"{_IMMEDIATE}; {_RESET}; COMMIT; SELECT launchpad.pending()")
        row = cur.fetchone()
        if row and row[0]:
            cur.connection.pending = True
        return
    cur.execute(f"{_IMMEDIATE}; {_RESET}; COMMIT" if ok else f"ROLLBACK; {_RESET}")


def query(
    conn: ext.connection, session: Session, statement: Statement, params: list[Any], limits: Limits
) -> QueryResult:
    started = time.perf_counter()
    with conn.cursor() as cur:
        rendered = render(statement, [_literal(cur, p) for p in params])
        cursor = statement.keyword in _CURSORABLE
        description, rows, affected = _run_statement(cur, rendered, cursor, session, limits)
        try:
            types = _type_names(cur, [d.type_code for d in description])
        except psycopg2.Error as exc:
            raise tenant_error(exc, limits, None, 0) from exc
    columns = [Column(d.name, t) for d, t in zip(description, types, strict=True)]
    return QueryResult(
        columns, rows.rows, rows.truncated, affected, (time.perf_counter() - started) * 1000, BACKEND
    )


def _run_statement(
    cur: ext.cursor, rendered: Rendered, cursor: bool, session: Session, limits: Limits
) -> tuple[list[Any], Rows, int]:
    """One transaction: BEGIN, timeout, claims, the statement (through a cursor when it returns rows), COMMIT."""
    head = f"{_begin(cur, session, limits)}; " + (
        f"DECLARE {_CURSOR} NO SCROLL CURSOR FOR " if cursor else ""
    )
    try:
        _first(cur, head + rendered.text)
        status = (cur.statusmessage or "").split()
        rows = _read(cur, cursor, limits)
        description = list(cur.description or ())
        _finish(cur, ok=True, session=session)  # COMMIT can fail too (deferred constraints, serialization)
    except psycopg2.Error as exc:
        _safe_rollback(cur)
        if cursor and isinstance(exc, psycopg2.errors.FeatureNotSupported):
            # DECLARE refuses a data-modifying WITH; nothing ran (rolled back), so run it plainly
            return _run_statement(cur, rendered, False, session, limits)
        raise tenant_error(exc, limits, rendered, len(head)) from exc
    except ServiceError:  # a row beyond the byte budget: the call fails, so nothing it did may stay
        _safe_rollback(cur)
        raise
    affected = int(status[-1]) if status and status[0] in _AFFECTING and status[-1].isdigit() else 0
    return description, rows, affected


def _read(cur: ext.cursor, cursor: bool, limits: Limits) -> Rows:
    """The rows within the limits, in batches; without a cursor (RETURNING) the driver holds them already."""
    if cursor:
        return collect(lambda size: _fetch(cur, size), limits)
    return collect(cur.fetchmany, limits) if cur.description else Rows(limits)


def _fetch(cur: ext.cursor, size: int) -> list[tuple[Any, ...]]:
    cur.execute(f"FETCH FORWARD {size} FROM {_CURSOR}")
    return cur.fetchall()


def _safe_rollback(cur: ext.cursor) -> None:
    if not cur.connection.closed:
        try:
            _finish(cur, ok=False)
        except psycopg2.Error:
            cur.connection.close()  # unknown state: never pool it


def explain(
    conn: ext.connection, session: Session, statement: Statement, params: list[Any], limits: Limits
) -> Plan:
    if statement.keyword not in _EXPLAINABLE:
        raise InvalidArgument(
            f"{statement.keyword or 'this'} statements have no plan: EXPLAIN covers SELECT, INSERT, UPDATE, "
            "DELETE, MERGE, VALUES, EXECUTE and CREATE TABLE AS"
        )
    with conn.cursor() as cur:
        rendered = render(statement, [_literal(cur, p) for p in params])
        # Our own option list: a statement starting with "(ANALYZE)" or "ANALYZE" is then a syntax error,
        # never options that would run it. It is planned only, and rolled back regardless.
        head = f"{_begin(cur, session, limits)}; EXPLAIN (FORMAT TEXT) "
        try:
            _first(cur, head + rendered.text)
            lines = [row[0] for row in cur.fetchall()]
            _finish(cur, ok=False)
        except psycopg2.Error as exc:
            _safe_rollback(cur)
            raise tenant_error(exc, limits, rendered, len(head)) from exc
    plan = "\n".join(lines)
    read_only = reads_only(statement.text, "postgres") is not False and not _plan_writes(lines)
    return Plan(plan, read_only, BACKEND)


def _plan_writes(lines: list[str]) -> bool:
    """A ModifyTable node (Insert/Update/Delete/Merge on ...) or row locks in the plan mean it writes."""
    return any(
        line.strip().lstrip("-> ").startswith(("Insert on", "Update on", "Delete on", "Merge on", "LockRows"))
        for line in lines
    )


_COLUMNS_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       COALESCE(pg_get_expr(d.adbin, d.adrelid), ''), COALESCE(array_position(pk.conkey, a.attnum), 0)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
LEFT JOIN pg_constraint pk ON pk.conrelid = c.oid AND pk.contype = 'p'
WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
ORDER BY c.relname, a.attnum
"""
_FOREIGN_KEYS_SQL = """
SELECT c.relname,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.i),
       CASE WHEN fn.nspname = n.nspname THEN f.relname ELSE fn.nspname || '.' || f.relname END,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(num, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.i)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class f ON f.oid = k.confrelid
JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE n.nspname = %s AND k.contype = 'f'
ORDER BY c.relname, k.conname
"""


def list_tables(conn: ext.connection, session: Session, schema: str, limits: Limits) -> list[Table]:
    with conn.cursor() as cur:
        try:
            _first(cur, _begin(cur, session, limits, writable=False))
            cur.execute(_COLUMNS_SQL, (schema,))
            columns = cur.fetchall()
            cur.execute(_FOREIGN_KEYS_SQL, (schema,))
            keys = cur.fetchall()
            _finish(cur, ok=True)
        except psycopg2.Error as exc:
            _safe_rollback(cur)
            raise tenant_error(exc, limits, None, 0) from exc
    return _tables(columns, keys)


def _tables(columns: list[tuple[Any, ...]], keys: list[tuple[Any, ...]]) -> list[Table]:
    tables: dict[str, Table] = {}
    positions: dict[str, list[tuple[int, str]]] = {}
    for table_name, name, type_, nullable, default, pk in columns:
        table = tables.setdefault(table_name, Table(table_name))
        table.columns.append(TableColumn(name, type_, nullable, pk > 0, default))
        if pk:
            positions.setdefault(table_name, []).append((pk, name))
    for table_name, ordered in positions.items():
        tables[table_name].primary_key = [name for _, name in sorted(ordered)]
    for table_name, sources, target, targets in keys:
        tables[table_name].foreign_keys.append(ForeignKey(list(sources), target, list(targets)))
    return list(tables.values())
