"""The live dry run on PostgreSQL: which rows a subject may read, update and delete, found by doing it.

One transaction, always rolled back, on a connection of its own as the platform user (the owner of the
tenant's database, a superuser like apply() needs):

1. REPEATABLE READ (one snapshot: the rows read, tried and returned are the same rows; a row a concurrent
   write changes meanwhile fails the probe with "retry"), with lock_timeout and statement_timeout. Its
   first statement, before the snapshot is taken (LOCK takes none), is `LOCK launchpad_private.rendered IN
   SHARE MODE`, the lock every apply() and render after DDL takes EXCLUSIVE first thing (pg_rls._lock): the
   probe waits for a running one and then sees what it committed, none starts until the probe ends, and
   locks are always taken in that order. Probes do not exclude each other.
2. The policy set under test (the stored one or a candidate) is made the table's row-level security, with
   the code apply() uses (pg_rls.stage): a candidate differs from what is stored only inside this
   transaction. When the table is already rendered from the same rules nothing is changed; otherwise the
   ALTER TABLE / CREATE POLICY take the table's ACCESS EXCLUSIVE lock until the rollback, so queries of
   that table wait for the probe (at most its statement timeout), and the probe waits for running queries
   at most LOCK_TIMEOUT, then says to retry.
3. `launchpad.enter()` with the subject's claims, signed exactly as a query's are, so the policies read the
   real `launchpad.claims()`; then, inside a SECURITY DEFINER function owned by the subject's role (admin,
   developer: _rw, viewer: _ro), which no code it sets off can leave (see _ACT_AS), as that role: `SELECT` (read), a no-op `UPDATE ... SET c = c ... RETURNING` (update: its WITH CHECK
   applies) and `DELETE ... RETURNING` (delete), each inside a savepoint rolled back at once. Both writes
   read the row (the assignment, RETURNING), and PostgreSQL then applies the read rules as well: like any
   UPDATE or DELETE with a WHERE clause, they reach only rows the subject can read. So the writes are tried
   on the rows read (the first `limit` of them, by ctid), which also bounds what they cost. A table with no
   column such an assignment can take (none, or only generated ones) is tried with SELECT ... FOR UPDATE,
   which applies the same USING policies (and, the row unchanged, WITH CHECK could not differ).
4. The rows are read by ctid as the platform user (`to_jsonb`), then ROLLBACK.

What the writes set off happens as in a real write, inside the transaction, and is rolled back with it:
triggers (an audit row they insert is gone), cascading foreign keys, constraint checks. A row whose write a
trigger or constraint refuses is tried alone and reported as not updatable / deletable, as a real write of
it would fail. Sequences are not transactional: a trigger calling nextval() leaves the sequence advanced.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg2
import psycopg2.extensions as ext
from psycopg2 import sql as pgsql

from services.core.db import first_line, pg_unavailable
from services.core.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ServiceError,
)
from services.core.policy import PolicySet, compile_set
from services.data import pg_rls
from services.data.model import Limits, Probe, ProbedRow

LOCK_TIMEOUT = "1s"  # the probe waits this long for a table a running query holds, then says to retry
Key = tuple[int, str]  # (tableoid, ctid as text): a row's physical position, stable within the transaction


@dataclass(frozen=True, slots=True)
class _Target:
    oid: int
    schema: str
    name: str  # schema-qualified, quoted
    assignable: str | None  # a column `SET c = c` may assign (None: SELECT ... FOR UPDATE instead)


def probe(
    dsn: str,
    key: bytes,
    role: str,
    documents: Sequence[Mapping[str, Any]],
    table: str,
    subject: Mapping[str, Any],
    kind: str,
    limit: int,
    limits: Limits,
) -> Probe:
    """In a worker thread. dsn: the platform user's, into the tenant's database; role: the tenant role of
    `kind` ("admin", "rw" or "ro"); subject: the claims a real call of it carries."""
    policies = compile_set(documents)  # InvalidArgument naming the offending part, before connecting
    try:
        conn = psycopg2.connect(dsn, connect_timeout=3, application_name="launchpad-data-probe")
    except psycopg2.OperationalError as exc:
        raise pg_unavailable("PostgreSQL is not available for the dry run", exc) from exc
    conn.autocommit = True  # our own BEGIN ... ROLLBACK: nothing here ever commits
    try:
        with conn.cursor() as cur:
            try:
                return _probe(cur, policies, key, role, table, subject, kind, limit, limits)
            except psycopg2.Error as exc:
                error = _probe_error(exc, table, limits)
                if error is None:
                    raise  # our own SQL is wrong: an internal error, logged with its stack
                raise error from exc
            finally:
                with contextlib.suppress(psycopg2.Error):  # should it fail, closing rolls back too
                    cur.execute("ROLLBACK")
    finally:
        conn.close()


def _probe(
    cur: ext.cursor,
    policies: PolicySet,
    key: bytes,
    role: str,
    table: str,
    subject: Mapping[str, Any],
    kind: str,
    limit: int,
    limits: Limits,
) -> Probe:
    cur.execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; "
        f"SET LOCAL statement_timeout = {int(limits.timeout_ms)}; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; "
        "SET LOCAL search_path = pg_catalog, pg_temp; "
        "LOCK TABLE launchpad_private.rendered IN SHARE MODE"
    )
    _check_superuser(cur)
    target = _target(cur, table)
    governed = pg_rls.stage(cur, policies, target.oid) and kind != "admin"
    _act_as(cur, role, target.schema)
    cur.execute(pg_rls.set_claims(cur, key, pg_rls.claims_text(subject), limits.timeout_ms))
    if cur.fetchone() != (True,):
        raise RuntimeError("launchpad.enter() refused the probe's own claims proof (clock or key mismatch)")
    found = _readable(cur, target, limit + 1)
    keys, truncated = found[:limit], len(found) > limit
    writable = kind != "ro" and bool(keys)  # a viewer's role cannot write, whatever a policy says
    deadline = time.monotonic() + limits.timeout_ms / 1000  # each statement has it; so has the whole fallback
    updatable = _touched(cur, _update_sql(target), keys, deadline) if writable else set()
    deletable = _touched(cur, _delete_sql(target), keys, deadline) if writable else set()
    records, cut = _records(cur, target, keys, limits)
    rows = [ProbedRow(record, True, k in updatable, k in deletable) for k, record in records]
    return Probe(governed, rows, truncated or cut)


def _check_superuser(cur: ext.cursor) -> None:
    cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    row = cur.fetchone()
    if not (row and row[0]):
        raise FailedPrecondition(
            "policies on PostgreSQL need the platform's database user to be a superuser; the dry run cannot "
            "run them either"
        )


_TARGET = """
SELECT c.oid::bigint, c.relkind::text,
       (SELECT a.attname FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        AND a.attgenerated = '' AND a.attidentity <> 'a' ORDER BY a.attnum LIMIT 1)
FROM pg_class c, launchpad_private.tenant t
WHERE c.relnamespace = t.schema_name::regnamespace AND c.relname = %s
"""


def _target(cur: ext.cursor, table: str) -> _Target:
    """The tenant's table of that name; InvalidArgument naming it when there is none.

    The no-op assignment: the first column that is neither generated nor GENERATED ALWAYS AS IDENTITY (both
    refuse any value but DEFAULT). Any other column takes its own value, whatever its type.
    """
    if not table:
        raise InvalidArgument(
            'name the table to dry-run the policies on (its bare name, e.g. "notes")', field="table"
        )
    cur.execute(_TARGET, (table,))
    row = cur.fetchone()
    if row is None:
        raise InvalidArgument(f'table "{table}" does not exist in this tenant', field="table", table=table)
    oid, relkind, column = row
    if relkind not in ("r", "p"):
        raise InvalidArgument(
            f'"{table}" is not a table (policies govern tables; a view reads through its tables)',
            field="table",
            table=table,
        )
    cur.execute("SELECT schema_name FROM launchpad_private.tenant")
    (schema,) = cur.fetchone()
    name = pgsql.Identifier(schema, table).as_string(cur)
    assignable = pgsql.Identifier(column).as_string(cur) if column else None
    return _Target(int(oid), schema, name, assignable)


# The subject's statements run inside this SECURITY DEFINER function, owned by the subject's role: as that role
# (its privileges, its row-level security), and where PostgreSQL refuses SET ROLE, RESET ROLE and SET SESSION
# AUTHORIZATION -- in the statement and in every trigger or function it sets off. The probe's session is the
# platform's superuser: with a plain SET LOCAL ROLE, a developer's trigger could RESET ROLE and act as it.
_ACT_AS = """
CREATE FUNCTION pg_temp.lp_probe_as(q text, rels oid[], olds tid[]) RETURNS TABLE (rel bigint, old text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema} AS $f$ BEGIN RETURN QUERY EXECUTE q USING rels, olds; END $f$;
ALTER FUNCTION pg_temp.lp_probe_as(text, oid[], tid[]) OWNER TO {role}
"""
_AS_SUBJECT = "SELECT rel, old FROM pg_temp.lp_probe_as(%s, %s::oid[], %s::tid[])"


def _act_as(cur: ext.cursor, role: str, schema: str) -> None:
    """The function the subject's statements run in (dropped with the transaction, which is rolled back);
    its search_path is the tenant's schema, as a query of that role runs (and the triggers it sets off see)."""
    cur.execute(pgsql.SQL(_ACT_AS).format(schema=pgsql.Identifier(schema), role=pgsql.Identifier(role)))


def _readable(cur: ext.cursor, target: _Target, limit: int) -> list[Key]:
    """As the subject: the first `limit` rows it can SELECT, by position. No SELECT privilege (an owner took
    it from viewers on an ungoverned table): nothing is readable, as a real SELECT fails."""
    sql = (
        f"SELECT t.tableoid::bigint, t.ctid::text FROM {target.name} AS t "
        f"ORDER BY t.tableoid, t.ctid LIMIT {int(limit)}"
    )
    cur.execute("SAVEPOINT lp_probe")
    try:
        cur.execute(_AS_SUBJECT, (sql, [], []))
        found = [(int(rel), ctid) for rel, ctid in cur.fetchall()]
    except psycopg2.Error as exc:
        cur.execute("ROLLBACK TO SAVEPOINT lp_probe")
        if exc.pgcode == "42501":
            return []
        raise
    cur.execute("RELEASE SAVEPOINT lp_probe")
    return found


# The rows to try come as two arrays (table oid, ctid); RETURNING gives back the row's *old* position
# (an UPDATE's own ctid would be the new row version's).
_ROWS = "unnest($1, $2) AS o(rel, old)"  # as the subject: the parameters of pg_temp.lp_probe_as
_ROWS_HERE = "unnest(%s::oid[], %s::tid[]) AS o(rel, old)"  # as the platform user: the driver's parameters
_MATCH = "t.tableoid = o.rel AND t.ctid = o.old"
_RETURNING = "RETURNING o.rel::bigint, o.old::text"


def _update_sql(target: _Target) -> str:
    if target.assignable is None:  # nothing to assign: the same USING policies, through a row lock
        return f"SELECT o.rel::bigint, o.old::text FROM {target.name} AS t JOIN {_ROWS} ON {_MATCH} FOR UPDATE OF t"
    column = target.assignable
    return f"UPDATE {target.name} AS t SET {column} = t.{column} FROM {_ROWS} WHERE {_MATCH} {_RETURNING}"


def _delete_sql(target: _Target) -> str:
    return f"DELETE FROM {target.name} AS t USING {_ROWS} WHERE {_MATCH} {_RETURNING}"


# SQLSTATE classes that are no verdict on a row: the whole probe fails (timeout, lock, serialization,
# connection, resources, internal errors).
_FATAL = ("08", "25", "40", "53", "55", "57", "58", "XX")


def _touched(cur: ext.cursor, sql: str, keys: Sequence[Key], deadline: float) -> set[Key]:
    """As the subject: which of `keys` the statement reaches, undone right away (a savepoint). When it fails
    (a trigger or constraint refuses some row), each row is tried alone: the ones that fail are not reached,
    as a real write of them fails. A missing privilege reaches none."""
    try:
        return _try(cur, sql, keys)
    except psycopg2.Error as exc:
        if _fatal(exc):
            raise
        if _no_privilege(exc):
            return set()
    reached: set[Key] = set()
    for key in keys:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(
                "the dry run ran out of time: a trigger or constraint refused some rows, so each row was "
                "tried alone; dry-run fewer rows (limit)"
            )
        try:
            reached |= _try(cur, sql, [key])
        except psycopg2.Error as exc:
            if _fatal(exc):
                raise
    return reached


def _try(cur: ext.cursor, sql: str, keys: Sequence[Key]) -> set[Key]:
    cur.execute("SAVEPOINT lp_probe")
    try:
        cur.execute(_AS_SUBJECT, (sql, [rel for rel, _ in keys], [ctid for _, ctid in keys]))
        return {(int(rel), ctid) for rel, ctid in cur.fetchall()}
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT lp_probe")


def _fatal(exc: psycopg2.Error) -> bool:
    code = exc.pgcode or ""
    return not code or code.startswith(_FATAL)


def _no_privilege(exc: psycopg2.Error) -> bool:
    message = exc.diag.message_primary or ""
    return exc.pgcode == "42501" and "row-level security" not in message


def _records(
    cur: ext.cursor, target: _Target, keys: Sequence[Key], limits: Limits
) -> tuple[list[tuple[Key, dict[str, Any]]], bool]:
    """As the platform user (whom row-level security does not filter): the rows at `keys`, in order, within
    the response's byte budget; whether some were left out for it."""
    if not keys:
        return [], False
    cur.execute(
        f"SELECT t.tableoid::bigint, t.ctid::text, to_jsonb(t) FROM {target.name} AS t JOIN {_ROWS_HERE} ON {_MATCH} "
        "ORDER BY t.tableoid, t.ctid",
        ([rel for rel, _ in keys], [ctid for _, ctid in keys]),
    )
    records: list[tuple[Key, dict[str, Any]]] = []
    size = 0
    for rel, ctid, record in cur.fetchall():
        size += len(orjson.dumps(record))
        if size > limits.max_bytes:
            return records, True
        records.append(((int(rel), ctid), record))
    return records, False


def _probe_error(exc: psycopg2.Error, table: str, limits: Limits) -> ServiceError | None:
    """The caller's view of a failed probe (nothing was written either way); None: our own SQL failed."""
    code = exc.pgcode or ""
    message = exc.diag.message_primary or first_line(exc)
    if code == "55P03":
        return Aborted(
            f'a running query holds table "{table}" (or policies are being applied); the dry run waited '
            f"{LOCK_TIMEOUT} for it: retry",
            table=table,
        )
    if code.startswith("40"):
        return Aborted(f'rows of "{table}" changed during the dry run: retry ({message})', table=table)
    if code == "57014":
        return DeadlineExceeded(f"the dry run ran longer than {limits.timeout_ms} ms", table=table)
    if code == "42501":  # govern() refused the table (developers' code on it): applying would refuse it too
        return InvalidArgument(f"{message}; the policies could not be applied either", table=table)
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError) and not code:
        return pg_unavailable("PostgreSQL could not run the dry run", exc)
    return None
