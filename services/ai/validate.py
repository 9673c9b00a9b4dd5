"""Every statement the assistant returns passes here first, whichever source wrote it.

In order: parsed with sqlglot in the backend's dialect; exactly one statement; read-only (SELECT / set
operations / WITH) unless writes were asked for, and never DDL, privileges or session changes (a generated
DROP TABLE is refused); every table and column checked against the tenant's real schema; then planned with
EXPLAIN through the data service, as the caller. The database stays the enforcement; this gives early,
clear reasons.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify

from services.ai.schema import DryRunRejected, Schema, TenantDb

log = logging.getLogger("launchpad.ai")
logging.getLogger("sqlglot").setLevel(logging.ERROR)  # it warns about constructs it passes through

_READS = (exp.Query,)  # SELECT, UNION / INTERSECT / EXCEPT, parenthesized and WITH queries
_WRITES = (exp.Insert, exp.Update, exp.Delete)
_HIDDEN_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Into, exp.Lock)
# Functions no generated statement needs: the database refuses most of them to tenant roles anyway.
_DENIED_FUNCTIONS = frozenset(
    {
        "pg_sleep",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "set_config",
        "dblink",
        "dblink_exec",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "load_extension",
        "readfile",
        "writefile",
    }
)
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
    known = [t.name for t in schema.tables if t.name.lower() in {n.lower() for n in tables}]
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
        if name in _DENIED_FUNCTIONS:
            return f"the function {name}() is refused in generated SQL"
    return ""


def _kind(tree: exp.Expression) -> str:
    """DROP TABLE, CREATE INDEX, PRAGMA, ... as the user would name it."""
    kind = tree.key.upper()
    target = tree.args.get("kind")
    return f"{kind} {target.upper()}" if isinstance(target, str) and target else kind


def _tables(tree: exp.Expression) -> list[str]:
    """The real tables a statement names (CTE names and table functions excluded), in order."""
    ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
    names: list[str] = []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.name.lower() in ctes:
            continue
        if table.name not in names:
            names.append(table.name)
    return names


def _check_schema(tree: exp.Expression, tables: list[str], schema: Schema) -> str:
    unknown = [name for name in tables if schema.table(name) is None]
    if unknown:
        return f"unknown table {', '.join(unknown)} (your tables: {schema.names})"
    mapping = {t.name: {c.name: "TEXT" for c in t.columns} for t in schema.tables}
    try:
        qualify(tree.copy(), schema=mapping, dialect=schema.dialect, validate_qualify_columns=True)
    except OptimizeError as exc:
        return f"unknown column: {_first_line(exc)}"
    except Exception as exc:  # a construct qualify cannot follow: the EXPLAIN dry run still checks it
        log.info("column check skipped: %s", _first_line(exc))
    return ""


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
