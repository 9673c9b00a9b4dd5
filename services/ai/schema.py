"""The tenant's schema as the assistant sees it, the words that name its tables and columns, and the
interface to the tenant's database (implemented over gRPC by services/ai/dataclient.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# --- Schema --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"int|serial|real|float|double|numeric|decimal|money|number")
_TIME = re.compile(r"date|time")
_TEXT = re.compile(r"char|text|clob|string|citext|name")
# SQLite columns are often declared TEXT but hold timestamps: the name tells.
_TIME_NAME = re.compile(r"(^|_)(at|on|date|time|timestamp|day)$|^(created|updated|modified|deleted)")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str = ""
    primary_key: bool = False

    @property
    def kind(self) -> str:
        """ "number", "time", "bool", "text" or "other" (from the declared type, then the name)."""
        declared = self.type.lower()
        if "bool" in declared:
            return "bool"
        if _TIME.search(declared) or (_TIME_NAME.search(self.name.lower()) and not _NUMBER.search(declared)):
            return "time"
        if _NUMBER.search(declared):
            return "number"
        if _TEXT.search(declared) or not declared:
            return "text"
        return "other"


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str  # the referenced table
    references: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name.lower() == name.lower()), None)

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)

    def time_column(self) -> Column | None:
        """The column that dates a row: the first date/time column, preferring created over updated."""
        columns = [c for c in self.columns if c.kind == "time"]
        first = [c for c in columns if not c.name.lower().startswith(("updated", "modified", "deleted"))]
        return (first or columns or [None])[0]

    def label_column(self) -> Column | None:
        """The column that names a row: name, label, username, email, code ... else the first text column,
        else the first column; None for a table with no columns (a schema snapshot can show one)."""
        for wanted in ("name", "label", "username", "email", "code"):
            hit = next((c for c in self.columns if identifier_words(c.name)[-1:] == (wanted,)), None)
            if hit is not None:
                return hit
        text = next((c for c in self.columns if c.kind == "text" and not c.primary_key), None)
        return text or (self.columns[0] if self.columns else None)


@dataclass(frozen=True, slots=True)
class Schema:
    """One tenant's tables, and which database holds them ("postgresql" or "sqlite")."""

    tables: tuple[Table, ...]
    backend: str

    @property
    def dialect(self) -> str:
        """sqlglot's name for the backend's SQL dialect."""
        return "sqlite" if self.backend == "sqlite" else "postgres"

    @property
    def dialect_name(self) -> str:
        return "SQLite" if self.backend == "sqlite" else "PostgreSQL"

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name.lower() == name.lower()), None)

    @property
    def names(self) -> str:
        return ", ".join(t.name for t in self.tables) or "(none)"

    def ddl(self) -> str:
        """The schema as CREATE TABLE statements: what a language model is shown."""
        return "\n".join(_create_table(t) for t in self.tables)


def _create_table(table: Table) -> str:
    lines = [f"  {c.name} {c.type or 'any'}" for c in table.columns]
    if table.primary_key:
        lines.append(f"  PRIMARY KEY ({', '.join(table.primary_key)})")
    lines.extend(
        f"  FOREIGN KEY ({', '.join(k.columns)}) REFERENCES {k.table} ({', '.join(k.references)})"
        for k in table.foreign_keys
    )
    return f"CREATE TABLE {table.name} (\n" + ",\n".join(lines) + "\n);"


# --- The tenant's database -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    text: str
    read_only: bool


class DryRunRejected(Exception):
    """The database refused to plan a statement (its message says why)."""


class TenantDb(Protocol):
    """The caller's tenant database, reached as the caller (their token): never another tenant's."""

    async def schema(self) -> Schema: ...

    async def explain(self, sql: str) -> Plan:
        """Plans `sql` without running it; DryRunRejected when the database refuses it."""
        ...

    async def find_values(self, table: str, columns: list[str], phrases: list[str]) -> list[tuple[str, str]]:
        """(column, stored value) for each stored value of `columns` equal to a phrase, ignoring case."""
        ...


# --- Words ---------------------------------------------------------------------------------------------

# Words that name the same thing; the first of each group is the one schemas usually use.
_SYNONYM_GROUPS = (
    ("customer", "client", "buyer", "purchaser", "shopper"),
    ("order", "purchase"),
    ("product", "item", "article", "good", "merchandise"),
    ("user", "member", "account"),
    ("person", "people"),
    ("employee", "staff", "worker"),
    ("department", "dept"),
    ("salary", "wage", "pay"),
    ("price", "cost", "priced"),
    ("total", "amount", "revenue", "sale", "spend", "spent", "spending", "turnover"),
    ("quantity", "qty"),
    ("name", "title", "named", "called"),
    ("email", "mail", "e-mail"),
    ("phone", "telephone", "mobile"),
    ("city", "town"),
    ("country", "nation"),
    ("category", "type", "kind", "genre"),
    ("status", "state"),
    ("created", "signup", "signed", "registered", "joined", "creation"),
    ("description", "summary"),
    ("stock", "inventory"),
)
_CANONICAL = {word: group[0] for group in _SYNONYM_GROUPS for word in group}
_IRREGULAR = {"people": "person", "children": "child", "men": "man", "women": "woman", "data": "data"}
_KEEP = frozenset(
    {"status", "address", "class", "business", "bus", "news", "series", "analysis", "is", "has"}
)


def singular(word: str) -> str:
    """English singular of a lower-case word (regular plurals and a few irregular ones)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _KEEP or len(word) < 4 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "zes", "sses", "uses")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def is_plural(word: str) -> bool:
    return singular(word) != word or word in ("people", "children")


def canonical(word: str) -> str:
    """The word schemas would use for `word`: singular, then its synonym group's first word."""
    base = singular(word.lower())
    return _CANONICAL.get(base, base)


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def identifier_words(name: str) -> tuple[str, ...]:
    """customer_id -> (customer, id); createdAt -> (created, at); OrderItems -> (order, item)."""
    parts = re.split(r"[_\W]+", _CAMEL.sub("_", name))
    return tuple(canonical(p) for p in parts if p)


# --- What a source proposes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Draft:
    """SQL a source (the embedded generator or a language model) proposes, before validation."""

    sql: str
    explanation: str


class CannotAnswer(Exception):
    """The source cannot answer the question from this schema; `reason` says why, plainly."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
