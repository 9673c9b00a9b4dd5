"""The data service's domain types: who runs SQL, within which limits, and what comes back.

Values in rows are plain Python: None, bool, int, float, str (text, ISO 8601 times, uuid), Decimal, bytes,
Json (a json/jsonb value, kept apart from text) and list (an array). The servicer maps them to Cells.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.core.config import Settings
from services.core.errors import InvalidArgument

TENANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@lru_cache(maxsize=4096)
def checked_tenant(tenant: str) -> str:
    """A tenant name that is safe in role, schema and file names; InvalidArgument otherwise."""
    if not TENANT_NAME.match(tenant):
        raise InvalidArgument(f"tenant {tenant!r} cannot hold SQL data: names match {TENANT_NAME.pattern}")
    return tenant


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified principal, reduced to what the database needs: the tenant and whether it may write."""

    tenant: str
    writable: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """Statement timeout and row cap of one call, never above the server's maximums."""

    timeout_ms: int
    max_rows: int

    @classmethod
    def of(
        cls, settings: Settings, timeout_ms: int = 0, max_rows: int = 0, remaining_s: float | None = None
    ) -> Limits:
        timeout = min(timeout_ms or settings.query_timeout_ms, settings.query_timeout_ms)
        if remaining_s is not None:  # the caller's own deadline is a limit too
            timeout = min(timeout, max(1, int(remaining_s * 1000)))
        return cls(max(1, timeout), max(1, min(max_rows or settings.query_max_rows, settings.query_max_rows)))


@dataclass(frozen=True, slots=True)
class Json:
    """A json/jsonb value (any JSON type), so a JSON string is not mistaken for text."""

    value: Any


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(slots=True)
class QueryResult:
    columns: list[Column]
    rows: list[tuple[Any, ...]]
    truncated: bool
    affected_rows: int
    elapsed_ms: float
    backend: str


@dataclass(frozen=True, slots=True)
class TableColumn:
    name: str
    type: str
    nullable: bool
    primary_key: bool
    default: str


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: list[str]
    references_table: str
    references_columns: list[str]


@dataclass(slots=True)
class Table:
    name: str
    columns: list[TableColumn] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plan:
    text: str
    read_only: bool
    backend: str


class TenantSql(ABC):
    """SQL of every tenant, isolated by the database itself. One implementation per backend."""

    backend: str

    @abstractmethod
    async def query(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> QueryResult: ...

    @abstractmethod
    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]: ...

    @abstractmethod
    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan: ...

    @abstractmethod
    async def close(self) -> None: ...
