"""The data service's domain types: who runs SQL, within which limits, and what comes back.

Values in rows are plain Python: None, bool, int, float, str (text, ISO 8601 times, uuid), Decimal, bytes,
Json (a json/jsonb value, kept apart from text) and list (an array). The servicer maps them to Cells.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from services.core.config import Settings
from services.core.context import TENANT_NAME
from services.core.errors import Code, InvalidArgument, ServiceError


@lru_cache(maxsize=4096)
def checked_tenant(tenant: str) -> str:
    """A tenant name that is safe in role, schema and file names; InvalidArgument otherwise."""
    if not TENANT_NAME.match(tenant):
        raise InvalidArgument(f"tenant {tenant!r} cannot hold SQL data: names match {TENANT_NAME.pattern}")
    return tenant


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified principal, reduced to what the database needs: the tenant, whether it may write, and what
    policies see of it (subject: sub, tenant, roles; governed: False for tenant admins)."""

    tenant: str
    writable: bool
    subject: Mapping[str, Any] = field(default_factory=dict)
    governed: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Statement timeout, row cap and byte budget of one call, never above the server's maximums."""

    timeout_ms: int
    max_rows: int
    max_bytes: int

    @classmethod
    def of(
        cls, settings: Settings, timeout_ms: int = 0, max_rows: int = 0, remaining_s: float | None = None
    ) -> Limits:
        timeout = min(timeout_ms or settings.query.timeout_ms, settings.query.timeout_ms)
        if remaining_s is not None:  # the caller's own deadline is a limit too
            timeout = min(timeout, max(1, int(remaining_s * 1000)))
        rows = max(1, min(max_rows or settings.query.max_rows, settings.query.max_rows))
        return cls(max(1, timeout), rows, max(1, settings.query.max_bytes))


@dataclass(frozen=True, slots=True)
class Json:
    """A json/jsonb value (any JSON type), so a JSON string is not mistaken for text."""

    value: Any


CELL_OVERHEAD = 8  # framing of one cell in the response, and the size of a number
FIRST_BATCH = 16  # rows read before their size is known
MAX_BATCH = 1000


def value_size(value: Any) -> int:
    """About how many bytes a value takes in a response (numbers and NULL: the overhead alone)."""
    if isinstance(value, str):
        return CELL_OVERHEAD + len(value.encode())
    if isinstance(value, bytes | memoryview):
        return CELL_OVERHEAD + len(value)
    if isinstance(value, Json):
        return value_size(value.value)
    if isinstance(value, list | tuple):
        return CELL_OVERHEAD + sum(value_size(item) for item in value)
    if isinstance(value, dict):
        return CELL_OVERHEAD + sum(value_size(k) + value_size(v) for k, v in value.items())
    if isinstance(value, Decimal):
        return CELL_OVERHEAD + len(str(value))
    return CELL_OVERHEAD


class Rows:
    """The rows of a result kept within the row cap and the byte budget (the gRPC message limit is 8 MB)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rows: list[tuple[Any, ...]] = []
        self.size = 0
        self.truncated = False

    def add(self, batch: list[tuple[Any, ...]]) -> bool:
        """Keeps rows of `batch` until a limit is reached; True while more rows are wanted."""
        for row in batch:
            size = sum(value_size(value) for value in row)
            if len(self.rows) == self.limits.max_rows or self.size + size > self.limits.max_bytes:
                if not self.rows:
                    raise InvalidArgument(
                        f"a single row of the result takes about {size} bytes, more than the "
                        f"{self.limits.max_bytes}-byte limit of a response: select fewer or shorter values"
                        " (e.g. substr(...) or octet_length(...))"
                    )
                self.truncated = True
                return False
            self.rows.append(row)
            self.size += size
        return True

    def next_batch(self) -> int:
        """How many rows to read next: about what the budget has room for, so memory stays near it."""
        wanted = self.limits.max_rows + 1 - len(self.rows)  # one more than the cap tells "truncated"
        if not self.rows:
            return min(FIRST_BATCH, wanted)
        per_row = self.size // len(self.rows) + 1
        room = (self.limits.max_bytes - self.size) // per_row + 1
        return max(1, min(MAX_BATCH, wanted, room))


def collect(fetch: Callable[[int], list[tuple[Any, ...]]], limits: Limits) -> Rows:
    """Reads rows in batches (fetch(n) returns at most n rows) until the result ends or a limit is hit."""
    rows = Rows(limits)
    while True:
        wanted = rows.next_batch()
        batch = fetch(wanted)
        if not rows.add(batch) or len(batch) < wanted:
            return rows


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


@dataclass(frozen=True, slots=True)
class ProbedRow:
    """One row of a live dry run: the row as JSON, and what the subject may do with it."""

    record: dict[str, Any]
    read: bool
    update: bool
    delete: bool


@dataclass(frozen=True, slots=True)
class Probe:
    """A live dry run's answer: whether the policies govern the table for the subject, the rows it may read
    (with what else it may do to each), and whether more rows than the limit qualified."""

    governed: bool
    rows: list[ProbedRow]
    truncated: bool


PROBE_LIMIT = 100  # rows of a live dry run when the caller names no limit
PROBE_MAX_LIMIT = 1000

Documents = list[Mapping[str, Any]]  # a policy set: the documents auth stores
Subject = Mapping[str, Any]  # sub, tenant and roles, as a real call of the subject carries them


class TenantSql(ABC):
    """SQL of every tenant, isolated by the database itself. One implementation per backend."""

    backend: str

    @abstractmethod
    async def query(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> QueryResult: ...

    @abstractmethod
    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]: ...

    @abstractmethod
    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan: ...

    async def apply_policies(self, tenant: str, documents: Documents, revision: int) -> list[str]:
        """Compiles the tenant's whole policy set against its tables and applies it (PostgreSQL: row-level
        security) in one transaction; the tables governed afterwards. InvalidArgument, with nothing applied,
        when a rule cannot be compiled for a table's column."""
        raise ServiceError("this SQL backend does not enforce policies yet", code=Code.UNIMPLEMENTED)

    async def probe_policies(
        self, tenant: str, documents: Documents, table: str, subject: Subject, limit: int, limits: Limits
    ) -> Probe:
        """The live dry run: which rows of `table` `subject` (sub, tenant, roles) may read, update and delete
        under `documents` (the whole set to evaluate, stored or not), found by running the real enforcement
        in a transaction that is rolled back. Nothing is written, nothing is applied. At most `limit` rows."""
        raise ServiceError("this SQL backend has no live dry run yet", code=Code.UNIMPLEMENTED)

    @abstractmethod
    async def close(self) -> None: ...
