"""Every statement the assistant returns passes here first, whichever source wrote it.

In order: parsed with sqlglot in the backend's dialect; exactly one statement; read-only (SELECT / set
operations / WITH) unless writes were asked for, and never DDL, privileges or session changes (a generated
DROP TABLE is refused); every table and column checked against the tenant's real schema (tables named
without a schema part: `other_schema.t` or `pg_catalog.t` is refused, SQLite's `main.t` allowed); then
planned with EXPLAIN through the data service, as the caller. The database stays the enforcement; this
gives early, clear reasons.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema

from services.ai.schema import DryRunRejected, Schema, TenantDb

log = logging.getLogger("launchpad.ai")
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns about constructs it passes through

_READS = (exp.Query,)  # SELECT, UNION / INTERSECT / EXCEPT, parenthesized and WITH queries
_WRITES = (exp.Insert, exp.Update, exp.Delete)
_HIDDEN_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Lock)
# Functions no generated statement needs, because they write (sequences, large objects, advisory locks,
# notifications, transaction ids), reach outside the tenant (files, dblink, settings) or run SQL of their
# own (query_to_xml and friends). The database refuses many of them to tenant roles anyway; this says so
# early and plainly. Exact names, then prefixes and infixes for the families.
_DENIED_FUNCTIONS = frozenset(
    {
        "setval",
        "nextval",
        "set_config",
        "pg_notify",
        "pg_current_xact_id",
        "pg_stat_file",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_logical_emit_message",
        "pg_file_write",
        "pg_promote",
        "load_extension",
        "readfile",
        "writefile",
    }
)
_DENIED_PREFIXES = (
    "pg_sleep",
    "pg_advisory",
    "pg_try_advisory",
    "lo_",
    "txid_",
    "dblink",
    "pg_read_",
    "pg_ls_",
)
_DENIED_INFIXES = ("_to_xml",)  # query_to_xml, table_to_xml, cursor_to_xml, *_to_xmlschema, ...
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of validating one statement."""

    ok: bool
    sql: str  # the statement as it will be returned (fences and trailing semicolons removed)
    reason: str = ""
    stage: str = ""  # parse | policy | schema | dry_run (for metrics)
    tables: tuple[str, ...] = ()
    refused: bool = False  # not allowed at all (DDL, unwanted writes): the text is not handed back

    @classmethod
    def failed(cls, sql: str, stage: str, reason: str, *, refused: bool = False) -> Verdict:
        return cls(False, sql, reason, stage, (), refused)


def clean(sql: str) -> str:
    """What a model wraps a statement in: code fences, a trailing semicolon, surrounding space."""
    text = _FENCE.sub("", sql.strip()).strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


async def validate(sql: str, schema: Schema, db: TenantDb, *, allow_writes: bool) -> Verdict:
    text = clean(sql)
    if not text:
        return Verdict.failed(text, "parse", "the statement is empty")
    tree = _parse(text, schema)
    if isinstance(tree, Verdict):
        return tree
    refusal = _policy(tree, allow_writes)
    if refusal:
        return Verdict.failed(text, "policy", refusal, refused=True)
    tables = _tables(tree)
    problem = _check_schema(tree, tables, schema)
    if problem:
        return Verdict.failed(text, "schema", problem)
    try:
        plan = await db.explain(text)
    except DryRunRejected as exc:
        return Verdict.failed(text, "dry_run", f"the database refused to plan it: {exc}")
    if not plan.read_only and not allow_writes:
        return Verdict.failed(
            text, "policy", "the database says this statement writes; writes were not asked for"
        )
    named = {name.lower() for _, name in tables}
    known = [t.name for t in schema.tables if t.name.lower() in named]
    return Verdict(True, text, tables=tuple(known))


def _parse(text: str, schema: Schema) -> exp.Expression | Verdict:
    try:
        trees = [t for t in sqlglot.parse(text, read=schema.dialect) if t is not None]
    except SqlglotError as exc:
        return Verdict.failed(
            text, "parse", f"it does not parse as {schema.dialect_name} SQL: {_first_line(exc)}"
        )
    except RecursionError:
        return Verdict.failed(text, "parse", "it is nested too deeply to check")
    if len(trees) != 1:
        return Verdict.failed(text, "policy", f"one statement only, this holds {len(trees)}", refused=True)
    return trees[0]


def _policy(tree: exp.Expression, allow_writes: bool) -> str:
    """Why this kind of statement is refused, or "" when it may be returned."""
    kind = _kind(tree)
    if isinstance(tree, _WRITES):
        if not allow_writes:
            return f"{kind} changes data and writes were not asked for (set allow_writes)"
    elif not isinstance(tree, _READS):
        allowed = "SELECT, INSERT, UPDATE and DELETE" if allow_writes else "read-only SELECT statements"
        return f"{kind} statements are refused: the assistant returns {allowed} only"
    elif not allow_writes and tree.find(*_HIDDEN_WRITES) is not None:
        return "this query writes or locks rows (a data-changing WITH, SELECT INTO or FOR UPDATE)"
    for func in tree.find_all(exp.Func):
        name = (func.name if isinstance(func, exp.Anonymous) else func.sql_name()).lower()
        if _denied(name):
            return f"the function {name}() is refused in generated SQL"
    return ""


def _denied(name: str) -> bool:
    return (
        name in _DENIED_FUNCTIONS
        or name.startswith(_DENIED_PREFIXES)
        or any(part in name for part in _DENIED_INFIXES)
    )


def _kind(tree: exp.Expression) -> str:
    """DROP TABLE, CREATE INDEX, PRAGMA, ... as the user would name it."""
    kind = tree.key.upper()
    target = tree.args.get("kind")
    return f"{kind} {target.upper()}" if isinstance(target, str) and target else kind


def _tables(tree: exp.Expression) -> list[tuple[str, str]]:
    """The real tables a statement names as (schema, table), in order; the schema part is "" when none is
    written (catalog and schema joined when both are). CTE names and table functions are excluded, but a
    qualified name is never a CTE, whatever the WITH says."""
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    names: list[tuple[str, str]] = []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue
        qualifier = ".".join(part for part in (table.catalog, table.db) if part)
        if not qualifier and table.name.lower() in ctes:
            continue
        if (qualifier, table.name) not in names:
            names.append((qualifier, table.name))
    return names


def _check_schema(tree: exp.Expression, tables: list[tuple[str, str]], schema: Schema) -> str:
    # The tenant's tables are reached unqualified: a schema or catalog part could only lead elsewhere
    # (another tenant's schema, pg_catalog, an attached SQLite file). SQLite's own `main` is the tenant's.
    own = ("", "main") if schema.backend == "sqlite" else ("",)
    outside = [f"{q}.{name}" for q, name in tables if q.lower() not in own]
    if outside:
        return (
            f"tables are named without a schema here; refused: {', '.join(outside)} "
            f"(your tables: {schema.names})"
        )
    unknown = [name for _, name in tables if schema.table(name) is None]
    if unknown:
        return f"unknown table {', '.join(unknown)} (your tables: {schema.names})"
    mapping = {t.name: {c.name: "TEXT" for c in t.columns} for t in schema.tables}
    # PostgreSQL keeps quoted names as written ("orderId", "Full Name"): the mapping holds the real names,
    # so it must not be folded to lower case there. SQLite compares names ignoring case, so it may be.
    dialect = schema.dialect
    mapped = MappingSchema(mapping, dialect=dialect, normalize=dialect != "postgres")
    try:
        qualify(tree.copy(), schema=mapped, dialect=dialect, validate_qualify_columns=True)
    except OptimizeError as exc:
        return f"unknown column: {_first_line(exc)}"
    except Exception as exc:  # a construct qualify cannot follow: the EXPLAIN dry run still checks it
        log.info("column check skipped: %s", _first_line(exc))
    return ""


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
