"""Tenant SQL on PostgreSQL: isolation by the database's own roles and databases, not by string checks.

Each tenant gets its own database, lp_<db>_<tenant>, holding a schema t_<tenant>, and three LOGIN roles,
lp_<db>_<tenant>_rw (developers), _ro (viewers) and _admin (admins; a member of _rw and of no other role;
_rw and _ro are members of none) (<db>: 6 hex digits of the platform database name's SHA-256, as
role and database names are server-wide). A database of its own
is what hides other tenants: the catalogs (pg_class, pg_proc, pg_namespace) are readable by everyone but only
describe the database they are in. Only the tenant's roles may connect to its database (PUBLIC may not);
pg_database and pg_roles are cluster-wide, so other tenants' database and role *names* stay visible.
This service connects AS the tenant role (its password is an HMAC of a service secret), so SET ROLE,
RESET ROLE, set_config('role', ...) and SET SESSION AUTHORIZATION cannot raise privileges, and superuser-only
functions (pg_read_file, COPY ... PROGRAM, lo_import) fail with permission errors. Migrations 002 and 003 (no
CREATE on public; no large objects or advisory locks for PUBLIC) are applied inside every tenant database too,
as those privileges are per database. Viewers use the read-only role, in READ ONLY transactions.
Policies are row-level security on governed tables, with claims set per transaction: see pg_rls.

Every call is one transaction with SET LOCAL statement_timeout; a row-returning query is read through a
cursor in batches sized to the row cap and byte budget, so a huge result never reaches this process.
Afterwards the session is reset (settings, advisory locks, temp tables, prepared statements), so one call never
leaks state into the next.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
from psycopg2 import sql as pgsql

from services.core.blocking import Blocking
from services.core.context import WRITE_ROLES
from services.core.db import PgPlatformDb, PgPool, first_line, pg_unavailable
from services.core.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    Unavailable,
)
from services.core.policy.book import PolicyBook
from services.data import pg_probe, pg_rls
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
from services.data.sqltext import Rendered, Statement, reads_only, render, scan

T = TypeVar("T")
log = logging.getLogger(__name__)
BACKEND = "postgresql"
PER_TENANT = 4
WORKERS = 16
MAX_OPEN_TENANTS = 32
# Bump when provisioning changes: tenants recorded with an older layout are provisioned again. Layout 3 moved
# each tenant from a schema of the platform database into a database of its own; the new database starts empty
# and the old schema is left where it was (no data is moved).
LAYOUT = 4  # 4: the admin role, and what policies need in the tenant database (pg_rls)
PROVISION_LOCK = 0x4C50  # first key of pg_advisory_lock(int, int); the second is hashtext(tenant)
# What the platform database's migrations revoke from PUBLIC, applied in each tenant database as well.
_MIGRATIONS = Path(__file__).parent / "migrations"
_TENANT_DATABASE_SETUP = [
    (_MIGRATIONS / name).read_text()
    for name in ("002_public_schema.postgresql.sql", "003_no_large_objects.postgresql.sql")
]

_CURSOR = "lp_rows"
# Statements that DECLARE ... CURSOR FOR accepts (a data-modifying WITH falls back to a plain execute).
_CURSORABLE = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "("})
_EXPLAINABLE = _CURSORABLE | {"INSERT", "UPDATE", "DELETE", "MERGE", "EXECUTE", "DECLARE", "CREATE"}
# Everything a statement may leave behind in the session, cleared inside the same round trip as COMMIT.
# Deferred constraint triggers fire now, while the caller's claims still hold, not at COMMIT after the reset.
_IMMEDIATE = "SET CONSTRAINTS ALL IMMEDIATE"
_RESET = "RESET ALL; SELECT pg_advisory_unlock_all(); CLOSE ALL; DEALLOCATE ALL; UNLISTEN *; DISCARD TEMP"
_AFFECTING = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "COPY"})


@dataclass(frozen=True, slots=True)
class TenantNames:
    """Object names of one tenant; safe because the tenant name matched TENANT_NAME (at most 40 chars)."""

    tenant: str
    database: str  # the platform database (POSTGRES_DSN): names derive from it, so deployments never collide

    @property
    def schema(self) -> str:
        return f"t_{self.tenant}"

    @property
    def tenant_database(self) -> str:
        return f"{tenant_database_prefix(self.database)}{self.tenant}"

    def role(self, writable: bool) -> str:
        return self.role_of("rw" if writable else "ro")

    def role_of(self, kind: str) -> str:
        """kind: "rw" (developers), "ro" (viewers) or "admin"."""
        return f"{tenant_database_prefix(self.database)}{self.tenant}_{kind}"

    @property
    def roles(self) -> pg_rls.Roles:
        return pg_rls.Roles(self.schema, self.role_of("rw"), self.role_of("ro"), self.role_of("admin"))


KINDS = ("rw", "ro", "admin")


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


def tenant_database_prefix(platform_database: str) -> str:
    """lp_<6 hex of the platform database name>_: what every tenant database and role name starts with."""
    return f"lp_{hashlib.sha256(platform_database.encode()).hexdigest()[:6]}_"


def role_password(secret: bytes, role: str) -> str:
    return hmac.new(secret, f"launchpad-tenant-role:{role}".encode(), hashlib.sha256).hexdigest()


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802/7677), computed here so the password
    itself never appears in a CREATE/ALTER ROLE statement (and so never in the server's statement log)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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


class _Stale(Exception):
    """The pooled connection was dead before our statement ran: safe to retry on a fresh one."""


class _LoginRefused(Exception):
    """The tenant role could not log in (dropped, or its password changed): provision again."""


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
            raise _Stale from exc
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


def _query(
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


def _explain(
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


def _list_tables(conn: ext.connection, session: Session, schema: str, limits: Limits) -> list[Table]:
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


# --- Provisioning (as the platform's own PostgreSQL user) -----------------------------------------------


def _provision(
    cur: ext.cursor, dsn: str, names: TenantNames, passwords: dict[str, str], timeout_ms: int, key: bytes
) -> None:
    """Creates or repairs the tenant's database, roles and schema, idempotently, one replica at a time.

    `cur` is an autocommit platform connection: CREATE DATABASE cannot run inside a transaction, so the lock
    is a session advisory lock, released at the end (or with the connection, should it die).
    """
    lock = (PROVISION_LOCK, names.tenant)
    cur.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", lock)
    try:
        _create_database(cur, names.tenant_database)
        _in_transaction(cur, _provision_roles, names, passwords, timeout_ms)
        _provision_tenant_database(dsn, names, key)  # conn.dsn hides the password
        cur.execute(_RECORD, (names.tenant, BACKEND, LAYOUT))
    finally:
        if not cur.connection.closed:
            cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", lock)


def _in_transaction(cur: ext.cursor, fn: Callable[..., None], *args: Any) -> None:
    conn = cur.connection
    conn.autocommit = False
    try:
        fn(cur, *args)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True


def _create_database(cur: ext.cursor, database: str) -> None:
    """The tenant's own database, owned by the platform's user (so a tenant cannot grant on it).

    template0: nobody connects to it, so concurrent creations never fail on "source database is being accessed
    by other users", and nothing an administrator added to template1 reaches a tenant.
    """
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
    if cur.fetchone():
        return
    # Replicas are serialized by the advisory lock; should the name be taken meanwhile anyway, it is ours.
    with contextlib.suppress(psycopg2.errors.DuplicateDatabase):
        cur.execute(pgsql.SQL("CREATE DATABASE {} TEMPLATE template0").format(pgsql.Identifier(database)))


_ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE {inherit} NOREPLICATION NOBYPASSRLS"


def _provision_roles(cur: ext.cursor, names: TenantNames, passwords: dict[str, str], timeout_ms: int) -> None:
    own, platform = pgsql.Identifier(names.tenant_database), pgsql.Identifier(names.database)
    for kind in KINDS:
        _provision_role(cur, names, kind, passwords[kind], timeout_ms)
    rw, ro, admin = (pgsql.Identifier(names.role_of(kind)) for kind in KINDS)
    for statement in (
        "REVOKE ALL ON DATABASE {own} FROM PUBLIC",  # CONNECT and TEMPORARY by default
        "GRANT CONNECT, TEMPORARY ON DATABASE {own} TO {rw}, {admin}",
        "GRANT CONNECT ON DATABASE {own} TO {ro}",
        # Layout 2 granted CONNECT on the platform database: taken back (PUBLIC may still have it there).
        "REVOKE ALL ON DATABASE {platform} FROM {rw}, {ro}, {admin}",
    ):
        cur.execute(pgsql.SQL(statement).format(own=own, platform=platform, rw=rw, ro=ro, admin=admin))


def _provision_role(cur: ext.cursor, names: TenantNames, kind: str, password: str, timeout_ms: int) -> None:
    role, schema = names.role_of(kind), pgsql.Identifier(names.schema)
    ident = pgsql.Identifier(role)
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
    verb = "ALTER" if cur.fetchone() else "CREATE"
    # The admin role inherits the developers' role (it owns what they own); the others inherit nothing.
    attributes = _ROLE_ATTRIBUTES.format(inherit="INHERIT" if kind == "admin" else "NOINHERIT")
    statement = pgsql.SQL(f"{verb} ROLE {{}} {attributes} PASSWORD %s").format(ident)
    cur.execute(statement, (scram_verifier(password),))
    # No membership in any other role (the admin role: only in _rw): whatever else was granted is taken back.
    # The developers' role must never be a member of the admin role, which owns the governed tables.
    keep = names.role_of("rw") if kind == "admin" else ""
    cur.execute(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = %s) AND r.rolname <> %s",
        (role, keep),
    )
    for (granted,) in cur.fetchall():
        cur.execute(pgsql.SQL("REVOKE {} FROM {} CASCADE").format(pgsql.Identifier(granted), ident))
    if keep:
        cur.execute(pgsql.SQL("GRANT {} TO {}").format(pgsql.Identifier(keep), ident))
    # A tenant can ALTER ROLE CURRENT_USER SET ...: only our defaults survive provisioning (and every call
    # sets its own statement_timeout with SET LOCAL, which wins over any default).
    cur.execute(pgsql.SQL("ALTER ROLE {} RESET ALL").format(ident))
    for database in (names.database, names.tenant_database):
        cur.execute(
            pgsql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(ident, pgsql.Identifier(database))
        )
    cur.execute(pgsql.SQL("ALTER ROLE {} SET search_path = {}").format(ident, schema))
    cur.execute(pgsql.SQL("ALTER ROLE {} SET statement_timeout = %s").format(ident), (str(timeout_ms),))


def _provision_tenant_database(platform_dsn: str, names: TenantNames, key: bytes) -> None:
    """Inside the tenant's database, as the platform's user: PUBLIC's revokes, the tenant's schema, then what
    policies need (pg_rls: claims, the event trigger)."""
    dsn = ext.make_dsn(platform_dsn, dbname=names.tenant_database)
    conn = psycopg2.connect(dsn, connect_timeout=3, application_name="launchpad-data")
    try:
        with conn, conn.cursor() as cur:  # one transaction
            for script in _TENANT_DATABASE_SETUP:
                cur.execute(script)
            _provision_schema(cur, names)
            pg_rls.provision(cur, names.roles, key)
    finally:
        conn.close()


def _provision_schema(cur: ext.cursor, names: TenantNames) -> None:
    schema = pgsql.Identifier(names.schema)
    rw, ro, admin = (pgsql.Identifier(names.role_of(kind)) for kind in KINDS)
    for statement in (
        "CREATE SCHEMA IF NOT EXISTS {schema}",  # owned by the platform user: tenants cannot re-grant it
        "REVOKE ALL ON SCHEMA {schema} FROM PUBLIC",
        "GRANT USAGE, CREATE ON SCHEMA {schema} TO {rw}, {admin}",
        "GRANT USAGE ON SCHEMA {schema} TO {ro}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {ro}",
        "GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {ro}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {rw} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {ro}",
        "ALTER DEFAULT PRIVILEGES FOR ROLE {rw} IN SCHEMA {schema} GRANT SELECT ON SEQUENCES TO {ro}",
    ):
        cur.execute(pgsql.SQL(statement).format(schema=schema, rw=rw, ro=ro, admin=admin))


_RECORD = """
INSERT INTO data_tenants (tenant, backend, layout) VALUES (%s, %s, %s)
ON CONFLICT (tenant) DO UPDATE SET backend = excluded.backend, layout = excluded.layout
"""


# --- The backend ----------------------------------------------------------------------------------------


class _Tenant:
    """Connection pools of one tenant (one per role), the slots that bound its concurrency, its claims key,
    and the platform user's DSN into its database (for rendering policies after DDL)."""

    def __init__(self, names: TenantNames, dsns: dict[str, str], key: bytes, platform_dsn: str) -> None:
        self.names = names
        self.key = key
        self.platform_dsn = platform_dsn
        self.slots = asyncio.Semaphore(PER_TENANT)
        self.pools = {
            kind: PgPool(
                dsn, PER_TENANT, connection_factory=TenantConnection, connect_timeout=3,
                application_name="launchpad-data",
            )
            for kind, dsn in dsns.items()
        }  # fmt: skip

    def session(self, caller: Caller) -> Session:
        return Session(role_kind(caller), self.key, pg_rls.claims_text(caller.subject))

    def run(self, session: Session, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: fn(connection, session, *args); a connection found dead before use is replaced
        once. When the call's DDL marked tables for governance, their policies are rendered before it returns."""
        pool = self.pools[session.kind]
        for attempt in range(2):
            conn = self._connect(pool)
            try:
                result = fn(conn, session, *args)
                if conn.pending:
                    conn.pending = False
                    self._render_pending()
                return result
            except _Stale as exc:
                pool.discard_idle()  # the server restarted: every idle connection is dead as well
                if attempt:
                    raise pg_unavailable("PostgreSQL connection lost", exc.__cause__ or exc) from exc
            except psycopg2.Error as exc:  # outside a statement: quoting a parameter, or a lost connection
                if conn.closed:
                    raise pg_unavailable("PostgreSQL connection lost", exc) from exc
                raise InvalidArgument(first_line(exc), sqlstate=exc.pgcode or "") from exc
            finally:
                pool.put(conn)
        raise AssertionError("unreachable")

    def _render_pending(self) -> None:
        """The statement committed; should rendering fail, the tables stay default-deny (fail closed) and the
        next write of the tenant tries again (they stay marked)."""
        try:
            pg_rls.resync(self.platform_dsn)
        except (psycopg2.Error, ServiceError) as exc:
            log.warning(
                "tenant %s: rendering policies after DDL failed: %s", self.names.tenant, first_line(exc)
            )

    @staticmethod
    def _connect(pool: PgPool) -> ext.connection:
        try:
            return pool.get()
        except psycopg2.OperationalError as exc:
            text = str(exc)
            # Its role or database was dropped, or a grant revoked: provisioning repairs all of them.
            refused = ("password authentication failed", "does not exist", "permission denied for database")
            if any(reason in text for reason in refused):
                raise _LoginRefused(first_line(exc)) from exc
            raise pg_unavailable("PostgreSQL is not available", exc) from exc

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class PgTenants(TenantSql):
    backend = BACKEND

    def __init__(self, db: PgPlatformDb, secret: bytes, max_timeout_ms: int) -> None:
        self._db = db
        self._book = PolicyBook(db)  # auth's stored policies, to reconcile a tenant's database with them
        self._secret = secret
        self._max_timeout_ms = max_timeout_ms
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._provisioned: set[str] = set()
        self._database = ""
        self._locks: dict[str, asyncio.Lock] = {}
        self._blocking = Blocking("data-pg", WORKERS)

    async def query(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> QueryResult:
        return await self._run(caller, _query, scan(sql), params, limits)

    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]:
        names = await self._names(caller.tenant)
        return await self._run(caller, _list_tables, names.schema, limits)

    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan:
        return await self._run(caller, _explain, scan(sql), params, limits)

    async def apply_policies(
        self, tenant: str, documents: list[Mapping[str, Any]], revision: int
    ) -> list[str]:
        """Compiles the tenant's whole policy set against its tables and applies it as row-level security, in
        one transaction of the tenant's database; the tables governed afterwards."""
        names = await self._names(tenant)
        await self._provision(names, force=False, reconcile=False)  # this set supersedes the stored one
        dsn = ext.make_dsn(self._db.dsn, dbname=names.tenant_database)
        return await self._blocking.run(pg_rls.apply, dsn, documents, revision)

    async def probe_policies(
        self,
        tenant: str,
        documents: list[Mapping[str, Any]],
        table: str,
        subject: Mapping[str, Any],
        limit: int,
        limits: Limits,
    ) -> Probe:
        """The live dry run (pg_probe): as the subject's role with its signed claims, under `documents` made
        the table's row-level security in a transaction of the tenant's database that is rolled back."""
        names = await self._names(tenant)
        await self._provision(names, force=False)
        roles = list(subject.get("roles", ()))
        writable = any(role in WRITE_ROLES for role in roles)
        kind = role_kind(Caller(tenant, writable, subject, governed="admin" not in roles))
        dsn = ext.make_dsn(self._db.dsn, dbname=names.tenant_database)
        key = pg_rls.claims_key(self._secret, names.tenant_database)
        return await self._blocking.run(
            pg_probe.probe, dsn, key, names.role_of(kind), documents, table, subject, kind, limit, limits
        )

    async def close(self) -> None:
        for tenant in self._tenants.values():
            await self._blocking.run(tenant.close)
        self._tenants.clear()
        self._blocking.shutdown()

    async def _run(self, caller: Caller, fn: Callable[..., T], *args: Any) -> T:
        for attempt in range(2):
            tenant = await self._tenant(caller.tenant, repair=attempt > 0)
            try:
                async with tenant.slots:
                    return await self._blocking.run(tenant.run, tenant.session(caller), fn, *args)
            except _LoginRefused as exc:
                if attempt:
                    raise pg_unavailable("the tenant's database role cannot log in", exc) from exc
        raise AssertionError("unreachable")

    async def _tenant(self, name: str, *, repair: bool = False) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is not None and not repair:
            self._tenants.move_to_end(name)
            return tenant
        names = await self._names(name)
        await self._provision(names, force=repair)
        return await self._open(names)

    async def _names(self, tenant: str) -> TenantNames:
        if not self._database:  # asked once: the DSN may leave the database name to libpq's defaults
            row = await self._db.fetchone("SELECT current_database() AS name")
            self._database = str(row["name"]) if row else ""
        return TenantNames(checked_tenant(tenant), self._database)

    async def _provision(self, names: TenantNames, *, force: bool, reconcile: bool = True) -> None:
        """Once per tenant and process (or when it could not log in): database, roles, schema and grants,
        then the tenant's stored policies if its database does not have them yet."""
        async with self._locks.setdefault(names.tenant, asyncio.Lock()):
            if names.tenant in self._provisioned and not force:
                return
            row = await self._db.fetchone("SELECT layout FROM data_tenants WHERE tenant = ?", (names.tenant,))
            if force or row is None or row["layout"] < LAYOUT:
                passwords = {kind: role_password(self._secret, names.role_of(kind)) for kind in KINDS}
                key = pg_rls.claims_key(self._secret, names.tenant_database)
                await self._db.run(_provision, self._db.dsn, names, passwords, self._max_timeout_ms, key)
            if reconcile:
                await self._reconcile(names)
            self._provisioned.add(names.tenant)

    async def _reconcile(self, names: TenantNames) -> None:
        """Policies auth stored that the tenant's database does not enforce (stored before it was provisioned
        with row-level security, or an apply whose undo failed) are applied before its first query here. If
        they cannot be, the tenant's SQL fails (FAILED_PRECONDITION) rather than run unprotected; an admin
        replaces the policy through the policy API, which applies the new set instead."""
        revision, documents = await self._book.stored(names.tenant)
        if revision == 0:
            return
        dsn = ext.make_dsn(self._db.dsn, dbname=names.tenant_database)
        try:
            await self._blocking.run(pg_rls.apply, dsn, documents, revision, behind_only=True)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"the tenant's stored policies cannot be enforced: {exc.message}; a tenant admin must replace or "
                "delete the policy (PUT or DELETE /api/policies/{name})"
            ) from exc

    async def _open(self, names: TenantNames) -> _Tenant:
        old = self._tenants.pop(names.tenant, None)
        if old is not None:
            await self._blocking.run(old.close)
        dsns = {
            kind: ext.make_dsn(
                self._db.dsn,
                dbname=names.tenant_database,
                user=names.role_of(kind),
                password=role_password(self._secret, names.role_of(kind)),
            )
            for kind in KINDS
        }
        key = pg_rls.claims_key(self._secret, names.tenant_database)
        platform_dsn = ext.make_dsn(self._db.dsn, dbname=names.tenant_database)
        tenant = self._tenants[names.tenant] = _Tenant(names, dsns, key, platform_dsn)
        while len(self._tenants) > MAX_OPEN_TENANTS:  # close the least recently used tenant's connections
            await self._blocking.run(self._tenants.popitem(last=False)[1].close)
        return tenant
