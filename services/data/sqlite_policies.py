"""Policies on SQLite (the embedded default): the outcomes of PostgreSQL's row-level security, without RLS.

One module, over 550 lines: the shadow views, triggers, write rewriting and authorizer below are one
defence, each closing what the others leave open; they are reviewed together.

For a policy-governed caller (developers and viewers; tenant admins are never governed) of a tenant whose
policies govern tables, each connection carries, per (policy revision, subject, schema version):

- a TEMP view per governed table, named like the table. SQLite resolves an unqualified name in `temp` first,
  so `notes` anywhere in the caller's SQL is the view: `SELECT * FROM main.notes WHERE <read> LIMIT -1
  OFFSET 0`. The OFFSET is a barrier (PostgreSQL's security_barrier): SQLite never flattens such a view
  nor pushes the caller's conditions into it, so a caller's expression (json(body), a CASE that errors) is
  only ever evaluated on rows the policy lets it read: an error message cannot reveal a hidden value.
  A statement in which no expression can fail (comparisons, arithmetic, IN lists, a short list of
  functions: statement_mode) gets the same view without the barrier, which SQLite merges into the query
  so indexes serve the caller's conditions (PostgreSQL's leakproof operators); switching is two DDL
  statements per governed table.
- TEMP triggers on the base table (they fire for this connection only): AFTER INSERT checks the new row
  against the insert predicate (WITH CHECK), BEFORE UPDATE the old row against read AND update (upserts and
  foreign-key cascades reach rows no WHERE chose), AFTER UPDATE the new row against update, BEFORE DELETE the
  old row against read AND delete (with recursive_triggers on, the rows INSERT OR REPLACE deletes too).
  A failed check is RAISE(ABORT, 'denied by policy: ...'): the statement is undone and the caller gets a 403.
- The write statement is rewritten (tokens only, never re-printed): its target becomes `main."notes"` and its
  WHERE becomes `CASE WHEN <read AND update (delete)> THEN (<your WHERE>) END` (`<...> AND (<your WHERE>)`
  when nothing in it can fail; `<row id> IN (<rows you may update>)` for UPDATE ... FROM, where another
  table could capture a bare column name), so the caller's condition never sees another row and rows it
  may not touch are skipped, as PostgreSQL's USING does. An upsert's DO UPDATE gets the same guard and
  refuses (403) a conflict with a row it may not update, before its WHERE or SET runs on that row.
- The authorizer, which names the innermost view or trigger behind each access: a governed base table may
  be read or written only through our objects or by the statement itself (the caller's text cannot name
  `main.notes`: that is refused before SQLite sees it). Views and triggers of the tenant over a governed
  table are refused for governed callers; so are schema changes of governed tables, temporary objects,
  and statistics or virtual tables that would show what the policy hides.

Objects of ours are named lp_policy_*; the caller's SQL may not use the prefix. Nothing here trusts text
rewriting alone: what the rewrite misses, the authorizer refuses (a write to the shadow view, a direct read).
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import FailedPrecondition, PermissionDenied
from services.core.policy import PolicySet, kind_of
from services.core.policy.sql import quote_ident, quote_text, render_table
from services.data.sqlite_tokens import Token, fold, tokenize

RESERVED = "lp_policy"
ACTIONS = ("read", "insert", "update", "delete")
REFUSE_FUNCTION = f"{RESERVED}_refuse"
# Tables whose rows show what a policy hides: statistics (row counts, sampled keys), page-level dumps and
# this connection's prepared statements.
HIDDEN_TABLES = frozenset(
    {"sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4", "dbstat", "sqlite_stmt"}
)
TEMP_CREATES = frozenset(
    {
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
    }
)
_TEMP_DROPS = frozenset(
    {
        sqlite3.SQLITE_DROP_TEMP_INDEX,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_VIEW,
    }
)
_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})


# --- The tenant's schema, as far as policies care -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BaseTable:
    name: str  # as created
    columns: dict[str, str]  # visible column -> declared type, in order
    key: tuple[str, ...]  # how a row is named: ("rowid",) (or _rowid_, oid) or the primary key columns
    kind: str  # "table", "virtual" or "shadow"


@dataclass(frozen=True, slots=True)
class Schema:
    version: int
    tables: dict[str, BaseTable]  # folded name -> table
    routines: dict[str, str]  # folded name -> "view" / "trigger": views and triggers of the main schema
    external: frozenset[str]  # virtual tables that read another table (full-text `content=` tables) and
    # their shadow tables (f_data, f_segments, ...: the index, tokens included)


_CONTENT_OPTION = re.compile(r"\bcontent\s*=", re.IGNORECASE)


def read_schema(conn: sqlite3.Connection) -> Schema:
    """The main schema's tables (with columns and row keys), views, triggers and external-content tables."""
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    tables: dict[str, BaseTable] = {}
    for name, kind, without_rowid in conn.execute(
        "SELECT name, type, wr FROM pragma_table_list WHERE schema = 'main' AND type <> 'view'"
    ).fetchall():
        if fold(name).startswith("sqlite_"):
            continue  # SQLite's own tables (sqlite_sequence, sqlite_schema, sqlite_stat1, ...)
        rows = conn.execute(
            "SELECT name, type, hidden, pk FROM pragma_table_xinfo(?, 'main') ORDER BY cid", (name,)
        ).fetchall()
        columns = {column: type_ or "" for column, type_, hidden, _ in rows if hidden != 1}
        primary = tuple(column for column, _, _, pk in sorted(rows, key=lambda r: r[3]) if pk)
        tables[fold(name)] = BaseTable(name, columns, _row_key(columns, primary, bool(without_rowid)), kind)
    routines: dict[str, str] = {}
    external: set[str] = set()
    for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM main.sqlite_master WHERE type IN ('view', 'trigger', 'table')"
    ).fetchall():
        if kind != "table":
            routines[fold(name)] = kind
        elif sql and sql.lstrip()[:20].upper().startswith("CREATE VIRTUAL") and _CONTENT_OPTION.search(sql):
            external.add(fold(name))
    shadows = {name for name, table in tables.items() if table.kind == "shadow"}
    external |= {name for name in shadows if any(name.startswith(f"{vtab}_") for vtab in external)}
    return Schema(version, tables, routines, frozenset(external))


def _row_key(columns: Mapping[str, str], primary: tuple[str, ...], without_rowid: bool) -> tuple[str, ...]:
    if without_rowid:
        return primary
    taken = {fold(column) for column in columns}
    for alias in ("rowid", "_rowid_", "oid"):  # a column may take the name; SQLite keeps the others
        if alias not in taken:
            return (alias,)
    return primary  # all three are columns: the primary key (if any) names a row


# --- What one call is governed by -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Guard:
    """A governed call: the tenant's policies and what they see of the caller."""

    policies: PolicySet
    subject: Mapping[str, Any]

    @property
    def key(self) -> tuple[int, str]:
        return self.policies.revision, json.dumps(self.subject, sort_keys=True, default=str)


def governs_tables(policies: PolicySet) -> bool:
    """Whether any rule names a table (storage and realtime rules do not govern SQL)."""
    return any(kind_of(scoped.rule.resource) == "table" for scoped in policies.scoped)


def resource_of(policies: PolicySet, table: str) -> str | None:
    """The name policies know the table by (SQLite names are case-insensitive: `Notes` is `notes` too),
    None when no rule governs it."""
    for name in (table, fold(table)):
        if policies.governs(name, kind="table"):
            return name
    return None


@dataclass(frozen=True, slots=True)
class Governed:
    """One governed table as installed on a connection: its objects and predicates."""

    table: BaseTable
    index: int
    passes: dict[str, str]  # action -> SQL that a row satisfies: (allow) AND NOT (deny)

    @property
    def ident(self) -> str:
        return quote_ident(self.table.name)

    def object(self, what: str) -> str:
        return f"{RESERVED}_{self.index}_{what}"


def render_passes(
    policies: PolicySet, resource: str, columns: Mapping[str, str], action: str, subject: Mapping[str, Any]
) -> str:
    return render_table(policies, resource, columns, action, "sqlite", subject).passes


def compile_check(
    conn: sqlite3.Connection, policies: PolicySet, schema: Schema, subject: Mapping[str, Any]
) -> list[str]:
    """ApplyPolicies on SQLite: every governed table's predicates rendered strictly (InvalidArgument names
    the table and column) and prepared by SQLite; the governed tables. Nothing is stored: the policies are
    read per call."""
    governed = []
    for table in schema.tables.values():
        resource = resource_of(policies, table.name)
        if resource is None or table.kind == "shadow":  # a full-text index's own storage
            continue
        for action in ACTIONS:
            passes = render_table(policies, resource, table.columns, action, "sqlite", subject, strict=True)
            conn.execute(f"EXPLAIN SELECT 1 FROM main.{quote_ident(table.name)} WHERE {passes.passes}")
        governed.append(table.name)
    return sorted(governed)


# --- Messages (the policy outcome, never a value) -------------------------------------------------------


def _outcome(what: str, table: str) -> str:
    t = json.dumps(table)
    return {
        "insert": f"denied by policy: no rule lets you insert this row into table {t}, or a deny rule matches "
        "it: insert rows the policies allow",
        "update_old": f"denied by policy: this statement would change a row of table {t} that you may not "
        "update (an upsert conflict or a foreign-key cascade reached it)",
        "update_new": f"denied by policy: the updated row is not one the policies let you write to table {t}: "
        "an update must leave a row you may update",
        "delete": f"denied by policy: this statement would delete a row of table {t} that you may not delete "
        "(INSERT OR REPLACE and foreign-key cascades delete rows too)",
        "upsert": f"denied by policy: the row of table {t} this upsert conflicts with is not one you may "
        "update; nothing was written",
    }[what]


def _direct(table: str) -> str:
    return (
        f"denied by policy: table {json.dumps(table)} is governed by policies; refer to it by its bare name "
        f"({table}, not main.{table}): schema-qualified names would bypass the policy"
    )


def _schema_change(table: str) -> str:
    return (
        f"denied by policy: table {json.dumps(table)} is governed by policies; changing its schema (DROP, "
        "ALTER, indexes, triggers, views over it) is for tenant admins"
    )


# --- Per-connection enforcement -------------------------------------------------------------------------


@dataclass
class Shield:
    """The enforcement state of one governed connection, consulted by its authorizer."""

    writable: bool
    key: tuple[Any, ...] | None = None  # what is installed: (revision, subject, schema version)
    mode: str = ""  # how the shadow views are built now: "fenced" or "flat" (see statement_mode)
    schema: Schema | None = None
    tables: dict[str, Governed] = field(default_factory=dict)  # folded name -> governed table
    contexts: frozenset[str] = frozenset()  # folded names of our views and triggers
    policies: PolicySet | None = None
    internal: bool = False  # our own statements: the authorizer lets them through
    denial: str | None = None  # why the current statement was refused (the first reason)
    installs: int = 0  # how often objects were (re)built: once per subject, policy revision and schema

    # ---- before each statement

    def prepare(self, conn: sqlite3.Connection, guard: Guard, sql: str) -> str:
        """The statement to run for a governed caller: the caller's objects in place (built when the subject,
        the policies or the schema changed), the text checked and its writes of governed tables routed."""
        self.denial = None
        self.internal = True
        try:
            version = conn.execute("PRAGMA schema_version").fetchone()[0]
            if self.schema is None or self.schema.version != version:
                self.schema = read_schema(conn)
            key = (*guard.key, version)
            self.policies = guard.policies
            if key != self.key:
                self.key = None  # a failure below leaves nothing half-known
                self._plan(guard, self.schema)
            tokens = tokenize(sql)
            self._check_collisions()
            self._refuse_names(tokens)
            mode = statement_mode(tokens, self.tables) or self.mode or FENCED
            if self.key is None:
                self._run(
                    conn, [*_drops(conn), *(s for g in self.tables.values() for s in _objects(g, mode))]
                )
                self.key, self.mode = key, mode
                self.installs += 1
            elif mode != self.mode:  # only the shadow views differ between the modes
                self._run(conn, [s for g in self.tables.values() for s in _shadow(g, mode, replace=True)])
                self.mode = mode
        finally:
            self.internal = False
        return _Rewriter(sql, tokens, self, flat=self.mode == FLAT).run()

    def _plan(self, guard: Guard, schema: Schema) -> None:
        tables: dict[str, Governed] = {}
        for folded, table in sorted(schema.tables.items()):
            resource = resource_of(guard.policies, table.name)
            if resource is None or table.kind != "table":
                continue
            passes = {
                a: render_passes(guard.policies, resource, table.columns, a, guard.subject) for a in ACTIONS
            }
            tables[folded] = Governed(table, len(tables), passes)
        self.tables = tables
        names = set(tables)
        names |= {fold(g.object(what)) for g in tables.values() for what in _OBJECT_NAMES}
        self.contexts = frozenset(names)

    def _run(self, conn: sqlite3.Connection, statements: Sequence[str]) -> None:
        """Our own DDL (temp schema only), all or nothing."""
        query_only = not self.writable
        if query_only:  # temp objects are writes too: allowed for our own statements only
            conn.execute("PRAGMA query_only = OFF")
        try:
            # A savepoint, not BEGIN: outside a transaction it is one; inside one (the live dry run's, see
            # sqlite_probe) it nests, and the objects go with that transaction's rollback.
            conn.execute(f"SAVEPOINT {_INSTALL}")
            try:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"RELEASE {_INSTALL}")
            except sqlite3.Error as exc:
                conn.execute(f"ROLLBACK TO {_INSTALL}")
                conn.execute(f"RELEASE {_INSTALL}")
                self.key = None
                raise FailedPrecondition(
                    f"the tenant's policies cannot be enforced on its tables: {exc}; a tenant admin must "
                    "fix the policy or the table"
                ) from exc
        finally:
            if query_only:
                conn.execute("PRAGMA query_only = ON")

    def _check_collisions(self) -> None:
        """A view or trigger of the tenant named like one of our objects would pass as ours."""
        assert self.schema is not None
        for name, kind in self.schema.routines.items():
            if name in self.contexts or name.startswith(RESERVED):
                raise PermissionDenied(
                    f"denied by policy: the tenant's {kind} {name!r} has the name of a policy-governed table "
                    f"or of an internal object ({RESERVED}_*); a tenant admin must rename or drop it"
                )

    def _refuse_names(self, tokens: Sequence[Token]) -> None:
        for i, token in enumerate(tokens):
            name = token.name
            if name is None:
                continue
            if token.kind != "string" and name.startswith(RESERVED):
                raise PermissionDenied(
                    f"names starting with {RESERVED} are reserved for policy enforcement: rename {token.text}"
                )
            dot = i + 1 < len(tokens) and tokens[i + 1].text == "."
            if dot and name in ("main", "temp") and i + 2 < len(tokens):
                target = tokens[i + 2].name
                if target is not None and target in self.tables:
                    raise PermissionDenied(_direct(self.tables[target].table.name))

    # ---- the authorizer

    def authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: Any) -> int:
        if self.internal:
            return sqlite3.SQLITE_OK
        reason = self._refusal(action, arg1, arg2, db, source)
        if reason is None:
            return sqlite3.SQLITE_OK
        if self.denial is None:
            self.denial = reason
        return sqlite3.SQLITE_DENY

    def _refusal(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, source: Any
    ) -> str | None:
        if action == sqlite3.SQLITE_READ or action in _WRITES:
            return self._access(action, arg1 or "", db, source)
        if action in TEMP_CREATES or action in _TEMP_DROPS:
            return (
                "denied by policy: temporary tables, views, triggers and indexes are not available to "
                "policy-governed users (each call may run on another connection): use a regular table"
            )
        if action in (sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
                      sqlite3.SQLITE_DROP_TRIGGER):  # fmt: skip
            reserved = fold(arg1 or "").startswith(RESERVED)
            governed = self._governed(arg2)
            if reserved or governed:
                return _schema_change(governed.table.name if governed else arg1 or "")
        if action == sqlite3.SQLITE_ALTER_TABLE and (governed := self._governed(arg2)):
            return _schema_change(governed.table.name)
        if action == sqlite3.SQLITE_DROP_TABLE and (governed := self._governed(arg1)):
            return _schema_change(governed.table.name)
        creates = (sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_VTABLE)
        if action in creates and fold(arg1 or "").startswith(RESERVED):
            return f"names starting with {RESERVED} are reserved for policy enforcement"
        if action == sqlite3.SQLITE_ANALYZE:
            return (
                "denied by policy: statistics describe rows the policies hide; ANALYZE is for tenant admins"
            )
        if action == sqlite3.SQLITE_PRAGMA and fold(arg1 or "") == "foreign_key_check":
            return "denied by policy: PRAGMA foreign_key_check lists row ids of rows the policies may hide"
        return None

    def _governed(self, name: str | None) -> Governed | None:
        return self.tables.get(fold(name or ""))

    def _access(self, action: int, table: str, db: str | None, source: Any) -> str | None:
        folded = fold(table)
        if folded in HIDDEN_TABLES:
            return f"denied by policy: {table} would show what the policies hide (counts, pages, statements)"
        if db == "temp":
            if action in _WRITES and folded in self.tables:  # a write the rewrite did not route: never run it
                return (
                    f"denied by policy: this write to table {json.dumps(table)} cannot be checked; write it as "
                    "a plain INSERT, UPDATE or DELETE of the table"
                )
            return None
        if db != "main":
            return None
        if folded in self.tables:
            if source is None or fold(source) in self.contexts:
                return None  # the statement itself (its text cannot name main.<table>) or our objects
            return (
                f"denied by policy: {source} reads or writes table {json.dumps(table)} directly; views and "
                "triggers over a policy-governed table are not available to policy-governed users (query the "
                "table itself, or ask a tenant admin)"
            )
        if folded in self.schema_external():
            return (
                f"denied by policy: {table} indexes the content of another table and would show rows the "
                "policies hide"
            )
        if self.policies is not None and resource_of(self.policies, table) is not None:
            kind = (
                self.schema.tables[folded].kind if self.schema and folded in self.schema.tables else "table"
            )
            if kind != "table":
                return (
                    f"denied by policy: {kind} table {json.dumps(table)} is governed but cannot be filtered"
                )
            return f"denied by policy: table {json.dumps(table)} became governed during this call: retry"
        return None

    def schema_external(self) -> frozenset[str]:
        return self.schema.external if self.schema else frozenset()

    def refuse(self, index: int) -> None:
        """lp_policy_refuse(i) in SQL: an upsert met a row it may not update."""
        governed = next((g for g in self.tables.values() if g.index == index), None)
        self.denial = _outcome("upsert", governed.table.name if governed else "?")
        raise PermissionError(self.denial)


_ROWID = ("rowid", "_rowid_", "oid")
_INSTALL = f"{RESERVED}_install"
_OBJECT_NAMES = ("update", "insert", "update_old", "update_new", "delete_old")


def _drops(conn: sqlite3.Connection) -> list[str]:
    """Statements that remove every object of the temp schema (a governed connection holds only ours)."""
    rows = conn.execute(
        "SELECT type, name FROM temp.sqlite_master WHERE type IN ('view', 'trigger')"
    ).fetchall()
    order = sorted(rows, key=lambda row: row[0] != "trigger")  # triggers first: some sit on the views
    return [f"DROP {kind.upper()} IF EXISTS temp.{quote_ident(name)}" for kind, name in order]


FENCED, FLAT = "fenced", "flat"


def _shadow(governed: Governed, mode: str, *, replace: bool = False) -> list[str]:
    """The view that stands for the table. Fenced: LIMIT -1 OFFSET 0 keeps SQLite from flattening it or
    pushing the caller's conditions into it, so they only ever see rows the policy lets through. Flat: a
    plain view SQLite may merge into the query (indexes serve the caller's conditions too), used only when
    no expression of the statement can fail or take a value-dependent path (statement_mode)."""
    ident, read = governed.ident, governed.passes["read"]
    fence = " LIMIT -1 OFFSET 0" if mode == FENCED else ""
    drop = [f"DROP VIEW IF EXISTS temp.{ident}"] if replace else []
    return [*drop, f"CREATE TEMP VIEW {ident} AS SELECT * FROM main.{ident} WHERE {read}{fence}"]


def _objects(governed: Governed, mode: str) -> list[str]:
    table, ident, passes = governed.table, governed.ident, governed.passes
    statements = _shadow(governed, mode)
    # The write objects exist on read-only connections too: a viewer's write then fails as read-only (roles
    # come first) and its EXPLAIN of a write plans what a developer's would run.
    keys = ", ".join(k if k in _ROWID else quote_ident(k) for k in table.key)
    if keys:  # the rows UPDATE ... FROM may change, named by key (see _Rewriter._routed)
        statements.append(
            f"CREATE TEMP VIEW {quote_ident(governed.object('update'))} AS SELECT {keys} FROM main.{ident} "
            f"WHERE {passes['read']} AND {passes['update']}"
        )
    checks = [
        ("insert", "AFTER INSERT", "NEW", passes["insert"]),
        ("update_old", "BEFORE UPDATE", "OLD", f"{passes['read']} AND {passes['update']}"),
        ("update_new", "AFTER UPDATE", "NEW", passes["update"]),
        ("delete_old", "BEFORE DELETE", "OLD", f"{passes['read']} AND {passes['delete']}"),
    ]
    for what, when, side, predicate in checks:
        row = ", ".join(f"{side}.{quote_ident(c)} AS {quote_ident(c)}" for c in table.columns)
        message = quote_text(_outcome(what if what != "delete_old" else "delete", table.name))
        statements.append(
            f"CREATE TEMP TRIGGER {quote_ident(governed.object(what))} {when} ON main.{ident} BEGIN "
            f"SELECT RAISE(ABORT, {message}) FROM (SELECT {row}) WHERE NOT ({predicate}); END"
        )
    return statements


# --- Which shadow views a statement may use -----------------------------------------------------------

# Functions that never fail and never grow a value (so no "string or blob too big"), whatever their input.
# Aggregates and window functions only ever see rows that passed the whole WHERE, so they are listed too.
_SAFE_FUNCTIONS = frozenset(
    {
        "count", "sum", "total", "avg", "min", "max", "group_concat",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "lag", "lead", "first_value",
        "last_value", "coalesce", "ifnull", "nullif", "iif", "length", "lower", "upper", "typeof", "instr",
        "substr", "substring", "trim", "ltrim", "rtrim", "unicode", "round", "date", "time", "datetime",
        "julianday", "unixepoch", "json_valid", "likely", "unlikely", "random", "changes", "total_changes",
        "last_insert_rowid",
    }
)  # fmt: skip
# Words that may stand before "(" without being a function call.
_NOT_CALLS = frozenset(
    {
        "IN", "VALUES", "CAST", "OVER", "FILTER", "USING", "AND", "OR", "NOT", "WHERE", "WHEN", "THEN",
        "ELSE", "ON", "BY", "SET", "HAVING", "CASE", "BETWEEN", "IS", "SELECT", "FROM", "JOIN", "AS",
        "INTO", "TABLE", "EXISTS", "DISTINCT", "ALL", "LIMIT", "OFFSET", "RETURNING", "WINDOW", "CONFLICT",
        "KEY", "UNIQUE", "CHECK", "REFERENCES", "DEFAULT",
    }
)  # fmt: skip
_UNSAFE_WORDS = frozenset({"LIKE", "GLOB", "MATCH", "REGEXP", "ESCAPE", "WITH", "RAISE"})
_UNSAFE_OPS = frozenset({"||", "->", "->>"})


def statement_mode(tokens: Sequence[Token], tables: Mapping[str, Governed]) -> str | None:
    """FLAT when no expression of the statement can fail (an error would tell something about a row it ran
    on) nor run a subquery per row: then SQLite may merge the shadow views into the query and evaluate
    conditions in any order, and indexes serve them. FENCED otherwise. None: no governed table is named,
    the views are not used (keep what is installed)."""
    if not any(t.name in tables for t in tokens if t.name is not None):
        return None
    depth = 0
    for i, token in enumerate(tokens):
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        if token.kind == "op":
            if token.text in _UNSAFE_OPS:
                return FENCED
            continue
        word = token.word
        if word in _UNSAFE_WORDS or (word == "SELECT" and depth > 0):
            return FENCED
        called = i + 1 < len(tokens) and tokens[i + 1].text == "(" and token.name is not None
        after_into = i > 0 and tokens[i - 1].word in ("INTO", "TABLE")  # INSERT INTO t (a, b)
        safe = token.kind == "word" and token.name in _SAFE_FUNCTIONS
        if called and word not in _NOT_CALLS and not after_into and not safe:
            return FENCED
    return FLAT


# --- Routing writes (token positions only: the caller's text is kept as written) -------------------------

_STATEMENTS = frozenset({"SELECT", "VALUES", "INSERT", "REPLACE", "UPDATE", "DELETE"})


class _Rewriter:
    def __init__(self, sql: str, tokens: list[Token], shield: Shield, *, flat: bool) -> None:
        self.sql = sql
        self.t = tokens
        self.shield = shield
        self.flat = flat  # every expression of the statement is safe (statement_mode)
        self.depth = _depths(tokens)
        self.edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the original text

    def run(self) -> str:
        i = self._statement_start()
        if i is None:
            return self.sql
        word = self.t[i].word
        if word in ("DROP", "ALTER", "CREATE"):
            self._schema_statement(i)
            return self.sql
        if word in ("INSERT", "REPLACE"):
            self._insert(i)
        elif word == "UPDATE":
            self._update(i)
        elif word == "DELETE":
            self._delete(i)
        return self._apply()

    def _word(self, i: int) -> str:
        return self.t[i].word if 0 <= i < len(self.t) else ""

    def _statement_start(self) -> int | None:
        i = 0
        if self._word(i) == "EXPLAIN":
            i += 1
            if self._word(i) == "QUERY" and self._word(i + 1) == "PLAN":
                i += 2
        if self._word(i) == "WITH":  # the CTE bodies are in parentheses: the first keyword outside them
            i += 1
            while i < len(self.t) and not (self.depth[i] == 0 and self.t[i].word in _STATEMENTS):
                i += 1
        return i if i < len(self.t) else None

    def _schema_statement(self, i: int) -> None:
        """DROP/ALTER of a governed table (or of our shadow view), or a view, trigger or index over one:
        refused with the reason (SQLite would find the shadow view first and answer confusingly)."""
        first, second = self._word(i), self._word(i + 1)
        if first == "DROP" or (first == "ALTER" and second == "TABLE"):
            j = i + 2
            if first == "DROP" and self._word(j) == "IF" and self._word(j + 1) == "EXISTS":
                j += 2
            if j + 1 < len(self.t) and self.t[j + 1].text == ".":
                j += 2  # main.x was checked already; temp.x is ours or refused by the authorizer
            governed = self.shield.tables.get(self.t[j].name or "") if j < len(self.t) else None
            if governed is not None:
                raise PermissionDenied(_schema_change(governed.table.name))
            return
        words = {token.word for token in self.t[i + 1 : i + 4]}
        if first == "CREATE" and words & {"VIEW", "TRIGGER", "INDEX"}:
            for token in self.t[i:]:
                governed = self.shield.tables.get(token.name or "")
                if governed is not None and token.kind != "string":
                    raise PermissionDenied(_schema_change(governed.table.name))

    def _target(self, i: int) -> tuple[Governed | None, int]:
        """The governed table named at token i (unqualified: qualified names were refused) and the index
        after the name."""
        if i >= len(self.t):
            return None, i
        if i + 1 < len(self.t) and self.t[i + 1].text == ".":
            return None, i + 3  # a qualified name: not a governed table (refused before)
        name = self.t[i].name
        governed = self.shield.tables.get(name) if name is not None else None
        if governed is not None:
            self.edits.append((self.t[i].start, self.t[i].end, f"main.{governed.ident}"))
        return governed, i + 1

    def _alias(self, j: int, stops: frozenset[str]) -> tuple[str | None, int]:
        if self._word(j) == "AS":
            return self.t[j + 1].text if j + 1 < len(self.t) else None, j + 2
        if j < len(self.t) and self.t[j].name is not None and self.t[j].word not in stops:
            return self.t[j].text, j + 1
        return None, j

    def _insert(self, i: int) -> None:
        j = i + 1
        if self._word(i) == "INSERT" and self._word(j) == "OR":
            j += 2
        if self._word(j) != "INTO":
            return
        governed, j = self._target(j + 1)
        if governed is None:
            return
        conflicts = [
            k
            for k in range(j, len(self.t) - 1)
            if self.depth[k] == 0 and self.t[k].word == "ON" and self.t[k + 1].word == "CONFLICT"
        ]
        returning = self._first(j, ("RETURNING",))
        for n, start in enumerate(conflicts):
            end = conflicts[n + 1] if n + 1 < len(conflicts) else returning
            self._upsert(governed, start, end)

    def _upsert(self, governed: Governed, start: int, end: int) -> None:
        """DO UPDATE on a conflicting row the caller may not update is refused (PostgreSQL raises too), before
        its WHERE and SET run on that row. Unqualified columns of DO UPDATE are the existing row's."""
        do = next(
            (
                k
                for k in range(start, end - 1)
                if self.depth[k] == 0 and self.t[k].word == "DO" and self.t[k + 1].word == "UPDATE"
            ),
            None,
        )
        if do is None:
            return  # DO NOTHING: the conflicting row is left alone, as PostgreSQL does
        allowed = self._predicate(governed, "update")
        refuse = f"{REFUSE_FUNCTION}({governed.index})"
        where = self._first(do + 2, ("WHERE",), end)
        self._guard_where(
            where,
            end,
            f"CASE WHEN {allowed} THEN ",
            f" ELSE {refuse} END",
            f"CASE WHEN {allowed} THEN 1 ELSE {refuse} END",
        )

    def _update(self, i: int) -> None:
        j = i + 1
        if self._word(j) == "OR":
            j += 2
        governed, j = self._target(j)
        if governed is None:
            return
        alias, j = self._alias(j, frozenset({"SET", "INDEXED", "NOT"}))
        start = self._first(j, ("SET",))
        clauses = self._first(start, ("WHERE", "RETURNING", "ORDER", "LIMIT"))
        joined = self._first(start, ("FROM",), clauses) < clauses  # UPDATE ... FROM
        self._routed(governed, alias, "update", start, joined)

    def _delete(self, i: int) -> None:
        if self._word(i + 1) != "FROM":
            return
        governed, j = self._target(i + 2)
        if governed is None:
            return
        alias, j = self._alias(j, frozenset({"WHERE", "INDEXED", "NOT", "RETURNING", "ORDER", "LIMIT"}))
        self._routed(governed, alias, "delete", j, False)

    def _routed(self, governed: Governed, alias: str | None, action: str, start: int, joined: bool) -> None:
        """WHERE of an UPDATE or DELETE: only rows the caller may read and update (delete) are candidates."""
        end = self._first(start, ("RETURNING", "ORDER", "LIMIT"))
        where = self._first(start, ("WHERE",), end)
        if joined:  # UPDATE ... FROM: other tables' columns could capture a bare name; name rows instead
            if not governed.table.key:
                raise PermissionDenied(
                    f"denied by policy: rows of table {json.dumps(governed.table.name)} have no name a policy "
                    "check can use (no rowid and no primary key): write it without UPDATE ... FROM"
                )
            allowed = self._visible(governed, alias or f"main.{governed.ident}", action)
        else:
            allowed = self._predicate(governed, action)
        if self.flat:  # nothing in the caller's condition can fail: let indexes serve it
            self._guard_where(where, end, f"{allowed} AND ", "", allowed)
        else:
            self._guard_where(where, end, f"CASE WHEN {allowed} THEN ", " END", allowed)

    @staticmethod
    def _predicate(governed: Governed, action: str) -> str:
        """The caller may read and `action` the row: columns unqualified, the statement's only table."""
        return f"({governed.passes['read']} AND {governed.passes[action]})"

    def _visible(self, governed: Governed, qualifier: str, action: str) -> str:
        keys = ", ".join(f"{qualifier}.{k if k in _ROWID else quote_ident(k)}" for k in governed.table.key)
        return f"(({keys}) IN (SELECT * FROM temp.{quote_ident(governed.object(action))}))"

    def _guard_where(self, where: int, end: int, head: str, tail: str, missing: str) -> None:
        """WHERE w -> WHERE <head>(w)<tail>, so w is evaluated only where the head's check holds; no WHERE
        -> WHERE <missing>. Inserted between tokens: comments and strings of the caller stay as they are."""
        if where + 1 < end:
            first, last = self.t[where + 1], self.t[end - 1]
            self.edits.append((first.start, first.start, f"{head}("))
            self.edits.append((last.end, last.end, f"\n){tail}"))
            return
        if where < end:  # a WHERE with nothing after it: SQLite's syntax error, unchanged
            return
        position = self.t[end].start if end < len(self.t) else self.t[-1].end
        self.edits.append((position, position, f" WHERE {missing} "))

    def _first(self, start: int, words: Sequence[str], end: int | None = None) -> int:
        """Index of the first token at depth 0 among `words` in [start, end); `end` (or len) if none."""
        stop = len(self.t) if end is None else end
        for k in range(start, stop):
            if self.depth[k] == 0 and self.t[k].word in words:
                return k
        return stop

    def _apply(self) -> str:
        text = self.sql
        for start, end, replacement in sorted(self.edits, reverse=True):
            text = text[:start] + replacement + text[end:]
        return text


def _depths(tokens: Sequence[Token]) -> list[int]:
    """Parenthesis depth at each token (the parenthesis itself counts as outside)."""
    depths, depth = [], 0
    for token in tokens:
        if token.text == ")":
            depth -= 1
        depths.append(depth)
        if token.text == "(":
            depth += 1
    return depths
