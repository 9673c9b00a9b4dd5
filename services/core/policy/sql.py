"""The SQL rendering of a policy: one table's predicate for one action, for PostgreSQL and for SQLite.

A row passes when `allow AND NOT deny`, and a deny whose condition cannot be evaluated must not deny: SQL's
NOT NULL is NULL, which would wrongly filter the row. On SQLite every comparison is guarded so that it is never
NULL (`typeof(c) = 'text' AND c = 'x'`: FALSE AND NULL is FALSE), because the views' triggers test `NOT passes`.
On PostgreSQL an allow may be NULL (row-level security treats it as false) and the deny is wrapped in
`coalesce(..., false)`; unguarded comparisons are what keep the predicate as cheap as the same WHERE.

The semantics are decide.py's, on the row's JSON view: numbers (1 == 1.0), strings (ordered by code point),
booleans, null, lists and objects; a missing column or a NULL satisfies nothing but `exists: false`; values of
different kinds never compare. How each backend gets there:

- PostgreSQL: a plain text, number or boolean column is compared natively (`"owner" = <subject's sub>`), so an
  index on the policy column serves the predicate; any other type goes through `to_jsonb(column)`. Subject
  values come from `launchpad.claims()` (the verified claims, jsonb): each reference, already read as the
  kind it is compared with, is one scalar `(select ...)`, which PostgreSQL runs once per statement.
- SQLite: values carry their own storage class, so each comparison checks `typeof(column)` first (which also
  stops SQLite's column affinity from turning '5' into 5). SQLite has no boolean type: in a column declared
  BOOLEAN the integers 0 and 1 are false and true (as on PostgreSQL, they then equal no number); elsewhere
  they are numbers. There is no JSON column: a nested path is missing. The subject is known per call and
  inlined as literals.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from services.core.errors import InvalidArgument
from services.core.policy.decide import MISSING, PolicySet, check, lookup
from services.core.policy.lang import Condition, is_number, is_ref, ref_path

Dialect = Literal["postgresql", "sqlite"]
CLAIMS = "launchpad.claims()"  # jsonb: the caller's verified claims, NULL when unverified (pg_rls.py)
_ORDER = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True, slots=True)
class TablePredicate:
    allow: str  # some allow rule for (table, action) holds (PostgreSQL: NULL means no)
    deny: str  # some deny rule for (table, action) holds; never NULL ("false" when no deny rule applies)

    @property
    def passes(self) -> str:
        return f"(({self.allow}) AND NOT ({self.deny}))"


def render_table(
    policies: PolicySet,
    table: str,
    columns: Mapping[str, str],
    action: str,
    dialect: Dialect,
    subject: Mapping[str, Any] | None = None,
    *,
    strict: bool = False,
) -> TablePredicate:
    """The predicate of `action` on `table` (columns: name -> declared type).

    strict (when a policy is being stored): a condition that can never hold for the column's type (a nested
    path into a text column, `gt` on a boolean, a string compared with a number column) is an InvalidArgument
    naming the table and column, instead of quietly matching nothing. A column the table lacks is never an
    error: it is missing, as the dry run says, and follows a later ADD COLUMN.
    """
    if dialect == "postgresql":
        render: _Renderer = _Postgres(table, columns, strict)
    else:
        if subject is None:
            raise ValueError("SQLite predicates inline the subject: pass it")
        render = _Sqlite(table, columns, subject, strict)
    parts: dict[str, list[str]] = {"allow": [], "deny": []}
    for scoped in policies.rules_for(action, table, kind="table"):
        where = f"{scoped.policy} rules[{scoped.index}]"
        terms = [render.condition(c, where) for c in scoped.rule.conditions]
        parts[scoped.rule.effect].append(_all(terms, render.true))
    allow = render.verified(_any(parts["allow"], render.false))
    return TablePredicate(allow, render.definite(_any(parts["deny"], render.false)))


def _all(terms: Sequence[str], true: str) -> str:
    return "(" + " AND ".join(terms) + ")" if terms else true


def _any(terms: Sequence[str], false: str) -> str:
    return "(" + " OR ".join(terms) + ")" if terms else false


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _number(value: int | float) -> str:
    text = repr(value) if isinstance(value, float) else str(value)
    return f"({text})" if text.startswith("-") else text


def _guarded(*parts: str) -> str:
    return "(" + " AND ".join(parts) + ")"


class _Renderer:
    true = "true"
    false = "false"

    def definite(self, predicate: str) -> str:
        """The predicate, never NULL."""
        return predicate if predicate in (self.true, self.false) else f"coalesce({predicate}, false)"

    def verified(self, allow: str) -> str:
        """An allow holds only for a caller whose claims verified: code that runs without them (after the
        call's reset, in someone else's session) is allowed nothing, whatever an unconditional rule says."""
        return allow if allow == self.false else f"((select {CLAIMS}) IS NOT NULL AND {allow})"

    def __init__(self, table: str, columns: Mapping[str, str], strict: bool) -> None:
        self.table = table
        self.columns = columns
        self.strict = strict

    def condition(self, condition: Condition, where: str) -> str:
        raise NotImplementedError

    def refuse(self, condition: Condition, where: str, why: str) -> None:
        if self.strict:
            raise InvalidArgument(
                f"{where}: {condition.key} {condition.op} cannot hold on table {self.table!r}: column "
                f"{condition.path[0]!r} {why}",
                field=condition.key,
                table=self.table,
                column=condition.path[0],
            )


# --- PostgreSQL -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Term:
    """A value in SQL: its JSON kind ("number", "string", "boolean"; "json" when only known per row;
    "missing"), its native SQL and its jsonb SQL."""

    kind: str
    sql: str
    json: str
    claim: str = ""  # a subject value: the path into the claims, as a text[] literal

    @property
    def static(self) -> bool:
        return self.kind in ("number", "string", "boolean")


_MISSING_TERM = _Term("missing", "NULL", "NULL::jsonb")
_NUMBER_TYPES = ("smallint", "integer", "bigint", "real", "double precision", "numeric")
_TEXT_TYPES = ("text", "character varying")
# How a jsonb value of a kind reads as that kind natively; NULL when the value is of another kind.
_FROM_JSON = {"string": "{v} #>> '{{}}'", "number": "({v} #>> '{{}}')::numeric", "boolean": "({v})::boolean"}


def _pg_kind(type_name: str) -> str:
    name = type_name.lower()
    if name.endswith("[]"):
        return "json"
    base = name.split("(")[0].strip()
    if base in _NUMBER_TYPES:
        return "number"
    if base in _TEXT_TYPES:
        return "string"
    return "boolean" if base == "boolean" else "json"  # every other type through to_jsonb


class _Postgres(_Renderer):
    def condition(self, condition: Condition, where: str) -> str:
        if condition.scope == "subject":
            value = self._claim(condition.path)
        else:
            value = self._column(condition, where)
        if condition.op == "exists":
            return _pg_exists(value, condition.operand)
        if value.kind == "missing":
            return self.false
        if condition.op == "in":
            return self._in(condition, where, value)
        operand = self._operand(condition.operand)
        if condition.op == "contains":
            self._check_contains(condition, where, value, operand)
            return _pg_contains(value, operand)
        self._check_comparable(condition, where, value, operand)
        if condition.op == "eq":
            return _pg_eq(value, operand)
        if condition.op == "ne":
            return _pg_ne(value, operand)
        return _pg_order(value, operand, _ORDER[condition.op])

    def _column(self, condition: Condition, where: str) -> _Term:
        name, *rest = condition.path
        type_name = self.columns.get(name)
        if type_name is None:
            return _MISSING_TERM
        column = quote_ident(name)
        kind = _pg_kind(type_name)
        if rest and kind != "json":
            self.refuse(condition, where, f"is {type_name}, which has no field {'.'.join(rest)!r}")
            return _MISSING_TERM
        if kind != "json":
            return _Term(kind, column, f"to_jsonb({column})")
        json_sql = f"to_jsonb({column})" + (f" #> {_pg_path(rest)}" if rest else "")
        return _Term("json", json_sql, f"({json_sql})")

    @staticmethod
    def _claim(path: Sequence[str]) -> _Term:
        sql = f"(select {CLAIMS} #> {_pg_path(path)})"
        return _Term("json", sql, sql, _pg_path(path))

    def _operand(self, operand: Any) -> _Term:
        if is_ref(operand):
            return self._claim(ref_path(operand))
        return _pg_literal(operand)

    def _in(self, condition: Condition, where: str, value: _Term) -> str:
        operand = condition.operand
        if is_ref(operand):
            items = self._claim(ref_path(operand)).json
            return _guarded(
                f"jsonb_typeof({value.json}) <> 'null'",
                f"jsonb_typeof({items}) = 'array'",
                f"EXISTS (SELECT 1 FROM jsonb_array_elements({items}) AS e(x) WHERE x = {value.json})",
            )
        terms = [self._operand(item) for item in operand]
        # A reference in the list that is missing or null makes the whole condition unmet (decide.py).
        present = [f"jsonb_typeof({t.json}) <> 'null'" for t in terms if t.kind == "json"]
        matches = [_pg_eq(value, term) for term in terms]
        if value.static and not any(t.kind in (value.kind, "json") for t in terms):
            self.refuse(condition, where, f"holds {value.kind}s; no element of the list is one")
        return _guarded(*present, _any(matches, self.false)) if matches else self.false

    def _check_comparable(self, condition: Condition, where: str, value: _Term, operand: _Term) -> None:
        if condition.op in _ORDER and value.kind == "boolean":
            self.refuse(condition, where, "is boolean, which has no order")
        elif value.static and operand.static and value.kind != operand.kind:
            self.refuse(condition, where, f"holds {value.kind}s, and the operand is a {operand.kind}")

    def _check_contains(self, condition: Condition, where: str, value: _Term, operand: _Term) -> None:
        if value.kind in ("number", "boolean"):
            self.refuse(condition, where, f"holds {value.kind}s; contains needs a list or a string")
        elif value.kind == "string" and operand.static and operand.kind != "string":
            self.refuse(condition, where, f"holds strings, and the operand is a {operand.kind}")


def _pg_path(path: Sequence[str]) -> str:
    return "ARRAY[" + ", ".join(quote_text(part) for part in path) + "]::text[]"


def _pg_literal(value: Any) -> _Term:
    dumped = quote_text(json.dumps(value, ensure_ascii=False)) + "::jsonb"
    if isinstance(value, bool):
        return _Term("boolean", "true" if value else "false", dumped)
    if is_number(value):
        return _Term("number", _number(value), dumped)
    if isinstance(value, str):
        return _Term("string", quote_text(value), dumped)
    return _Term("json", dumped, dumped)


def _as(term: _Term, kind: str) -> str:
    """A term as native SQL of `kind`: NULL when its value is of another kind. A subject value becomes one
    scalar subquery, which PostgreSQL runs once per statement; a JSON column is read per row."""
    if term.kind == kind:
        return term.sql
    if term.kind != "json":
        return "NULL"
    if term.claim:
        native = _FROM_JSON[kind].format(v="c")
        claim = f"(select {CLAIMS} #> {term.claim}) AS x(c)"
        return f"(select CASE WHEN jsonb_typeof(c) = '{kind}' THEN {native} END FROM {claim})"
    native = _FROM_JSON[kind].format(v=term.json)
    return f"(CASE WHEN jsonb_typeof({term.json}) = '{kind}' THEN {native} END)"


# Comparisons below are NULL when a side is missing (not true: an allow fails, a deny is coalesced to false).


def _pg_eq(a: _Term, b: _Term) -> str:
    if a.static or b.static:
        kind = a.kind if a.static else b.kind
        if (a.static and b.static and a.kind != b.kind) or "missing" in (a.kind, b.kind):
            return "false"
        return f"({_as(a, kind)} = {_as(b, kind)})"
    return _guarded(f"jsonb_typeof({a.json}) <> 'null'", f"{a.json} = {b.json}")


def _pg_ne(a: _Term, b: _Term) -> str:
    return _guarded(
        f"jsonb_typeof({a.json}) <> 'null'", f"jsonb_typeof({b.json}) <> 'null'", f"{a.json} <> {b.json}"
    )


def _pg_order(a: _Term, b: _Term, op: str) -> str:
    """Numbers with numbers, strings with strings (by code point: COLLATE "C" compares UTF-8 bytes)."""
    if a.static and b.static and a.kind != b.kind:
        return "false"
    kinds = [k for k in ("number", "string") if a.kind in (k, "json") and b.kind in (k, "json")]
    options = []
    for kind in kinds:
        collate = ' COLLATE "C"' if kind == "string" else ""
        options.append(f"({_as(a, kind)}{collate} {op} {_as(b, kind)})")
    return _any(options, "false")


def _pg_contains(value: _Term, operand: _Term) -> str:
    if value.kind == "string":
        return f"(strpos({value.sql}, {_as(operand, 'string')}) > 0)"
    if value.kind != "json":
        return "false"
    v, o = value.json, operand.json
    in_list = _guarded(
        f"jsonb_typeof({v}) = 'array'",
        f"EXISTS (SELECT 1 FROM jsonb_array_elements({v}) AS e(x) WHERE x = {o})",
    )
    in_text = _guarded(
        f"jsonb_typeof({v}) = 'string'",
        f"jsonb_typeof({o}) = 'string'",
        f"strpos({v} #>> '{{}}', {o} #>> '{{}}') > 0",
    )
    return _guarded(f"jsonb_typeof({o}) <> 'null'", f"({in_list} OR {in_text})")


def _pg_exists(value: _Term, wanted: bool) -> str:
    if value.kind == "missing":
        return "false" if wanted else "true"
    present = value.sql if value.static else value.json
    null = "" if value.static else f" OR jsonb_typeof({present}) = 'null'"
    if wanted:
        return (
            _guarded(f"{present} IS NOT NULL", f"jsonb_typeof({present}) <> 'null'")
            if null
            else f"({present} IS NOT NULL)"
        )
    return f"({present} IS NULL{null})"


# --- SQLite -----------------------------------------------------------------------------------------------


class _Sqlite(_Renderer):
    true = "1"
    false = "0"

    def definite(self, predicate: str) -> str:
        return predicate  # NULL-free by construction

    def verified(self, allow: str) -> str:
        return allow  # the subject is inlined: there are no claims to be missing

    def __init__(
        self, table: str, columns: Mapping[str, str], subject: Mapping[str, Any], strict: bool
    ) -> None:
        super().__init__(table, columns, strict)
        self.subject = subject

    def condition(self, condition: Condition, where: str) -> str:
        if condition.scope == "subject":  # known for this call: decided here, exactly as the dry run does
            held, _ = check(condition, {"record": {}, "subject": self.subject})
            return self.true if held else self.false
        name, *rest = condition.path
        if name not in self.columns:
            column = None
        elif rest:
            self.refuse(condition, where, "is a SQLite column, which has no fields")
            column = None
        else:
            column = _Column.of(name, self.columns[name])
            if not column.boolean and condition.op in ("eq", "in") and _has_bool(condition.operand):
                self.refuse(
                    condition, where, "is not BOOLEAN: SQLite has no booleans there, compare with 1 or 0"
                )
        if condition.op == "exists":
            if column is None:
                return self.false if condition.operand else self.true
            return f"({column.sql} IS {'NOT ' if condition.operand else ''}NULL)"
        operand = self._resolve(condition.operand)
        if column is None or operand is MISSING:
            return self.false
        return _SQLITE_OPS[condition.op](column, operand)

    def _resolve(self, operand: Any) -> Any:
        """The operand's value for this subject; MISSING when a reference is missing or null."""
        if is_ref(operand):
            value = lookup(self.subject, ref_path(operand))
            return MISSING if value is None else value
        if isinstance(operand, list):
            items = [self._resolve(item) for item in operand]
            return MISSING if any(item is MISSING for item in items) else items
        return operand


def _has_bool(operand: Any) -> bool:
    return isinstance(operand, bool) or (
        isinstance(operand, list) and any(isinstance(v, bool) for v in operand)
    )


def sqlite_value(declared: str, value: Any) -> Any:
    """A SQLite value as policies see it (the record of the dry run): 0 and 1 of a BOOLEAN column are booleans."""
    if "BOOL" in declared.upper() and type(value) is int and value in (0, 1):
        return bool(value)
    return value


@dataclass(frozen=True, slots=True)
class _Column:
    """A SQLite column, its affinity (from the declared type, SQLite's own rules) and whether it is BOOLEAN."""

    sql: str
    affinity: str
    boolean: bool

    @classmethod
    def of(cls, name: str, declared: str) -> _Column:
        return cls(quote_ident(name), _affinity(declared), "BOOL" in declared.upper())

    def compared_with(self, value: Any) -> str:
        """The column as one side of a comparison with `value`. Against a column of numeric affinity SQLite
        turns the text '5' into the number 5 before comparing (and a text column turns 5 into '5'); `+col`
        has no affinity, so nothing is converted. Plain `col` is kept where no conversion can happen, so an
        index on the column still serves the comparison."""
        numeric = self.affinity in ("INTEGER", "REAL", "NUMERIC")
        converts = (isinstance(value, str) and numeric) or (
            not isinstance(value, str) and self.affinity == "TEXT"
        )
        return f"+{self.sql}" if converts else self.sql


def _affinity(declared: str) -> str:
    name = declared.upper()
    if "INT" in name:
        return "INTEGER"
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not name or "BLOB" in name:
        return "BLOB"
    return "REAL" if any(word in name for word in ("REAL", "FLOA", "DOUB")) else "NUMERIC"


def _sqlite_guard(column: _Column, value: Any) -> str | None:
    """What the column's value must be for `value` to compare with it; None when nothing in it can."""
    c = column.sql
    if isinstance(value, str):
        return f"typeof({c}) = 'text'"
    if isinstance(value, bool):
        return f"typeof({c}) = 'integer' AND {c} IN (0, 1)" if column.boolean else None
    if not is_number(value):
        return None  # SQLite columns hold no lists or objects
    if column.boolean:  # its 0 and 1 are booleans, not numbers
        return f"(typeof({c}) = 'real' OR (typeof({c}) = 'integer' AND {c} NOT IN (0, 1)))"
    return f"typeof({c}) IN ('integer', 'real')"


def _sqlite_literal(value: Any) -> str:
    if isinstance(value, str):
        return f"{quote_text(value)} COLLATE BINARY"
    if isinstance(value, bool):
        return "1" if value else "0"
    return _number(value)


def _sqlite_compare(op: str) -> Callable[[_Column, Any], str]:
    def render(column: _Column, value: Any) -> str:
        guard = _sqlite_guard(column, value)
        if guard is None or (op != "=" and isinstance(value, bool)):  # booleans have no order
            return "0"
        return f"({guard} AND {column.compared_with(value)} {op} {_sqlite_literal(value)})"

    return render


_sqlite_eq = _sqlite_compare("=")


def _sqlite_in(column: _Column, values: Any) -> str:
    if not isinstance(values, list):
        return "0"
    return _any([_sqlite_eq(column, v) for v in values], "0")


def _sqlite_contains(column: _Column, value: Any) -> str:
    if not isinstance(value, str):
        return "0"  # a SQLite value is never a list
    return f"(typeof({column.sql}) = 'text' AND instr({column.sql}, {quote_text(value)}) > 0)"


_SQLITE_OPS: dict[str, Callable[[_Column, Any], str]] = {
    "eq": _sqlite_eq,
    "ne": lambda column, value: f"({column.sql} IS NOT NULL AND NOT {_sqlite_eq(column, value)})",
    "in": _sqlite_in,
    "contains": _sqlite_contains,
    **{op: _sqlite_compare(sql) for op, sql in _ORDER.items()},
}
