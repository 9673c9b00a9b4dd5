"""Tenant SQL on SQLite (the embedded default): one file per tenant, isolation enforced by SQLite itself.

Each tenant has data_dir/tenants/<tenant>.sqlite. Connections (sqlite_connection: authorizer, limits,
timeout) are reused per tenant and role; at most PER_TENANT run at once for one tenant, so a slow tenant
cannot take every worker thread.

Policies: developers and viewers of a tenant whose policies govern tables run on connections of their own
(never shared with admins or ungoverned callers), which carry the shadow views, triggers and authorizer
checks of sqlite_policies for the caller's subject; a tenant without table policies pays one revision read.
The live dry run (sqlite_probe) runs the same enforcement on a connection of its own, never pooled.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson

from services.core.blocking import Blocking
from services.core.db import PlatformDb
from services.core.errors import InvalidArgument, Unavailable
from services.core.policy import PolicySet, compile_set
from services.core.policy.book import PolicyBook
from services.data.model import (
    Caller,
    Documents,
    Json,
    Limits,
    Plan,
    Probe,
    QueryResult,
    Subject,
    Table,
    TenantSql,
    checked_tenant,
)
from services.data.sqlite_connection import BACKEND, Connection
from services.data.sqlite_policies import Guard, compile_check, governs_tables, read_schema
from services.data.sqlite_probe import ADMIN, WRITER, probe, probe_kind
from services.data.sqltext import Statement, scan

T = TypeVar("T")
PER_TENANT = 4
WORKERS = 8
MAX_OPEN_TENANTS = 64


class _Tenant:
    """Open connections of one tenant, per role and governance, and the slots that bound its concurrency."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.slots = asyncio.Semaphore(PER_TENANT)
        self.idle: dict[tuple[bool, bool], list[Connection]] = {
            (writable, governed): [] for writable in (True, False) for governed in (True, False)
        }
        self.closed = False

    def run(self, writable: bool, guard: Guard | None, keep: bool, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: fn(connection, *args) on a reused connection of the role (for a governed call,
        preferably one already set up for the same subject). keep=False: a connection on which the call
        made temporary objects is closed afterwards, so they never reach another caller."""
        pool = self.idle[(writable, guard is not None)]
        try:
            conn = _take(pool, guard) if pool else Connection(self.path, writable, guard is not None)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the tenant database: {exc}") from exc
        conn.made_temp = False
        try:
            return fn(conn, *args)
        finally:  # more than PER_TENANT exist only after a cancelled call: do not keep the extra
            if self.closed or len(pool) >= PER_TENANT or (conn.made_temp and not keep):
                conn.close()
            else:
                pool.append(conn)

    def alone(self, writable: bool, governed: bool, fn: Callable[..., T], *args: Any) -> T:
        """In a worker thread: fn(connection, *args) on a connection of its own, closed afterwards (the live
        dry run: what it builds on the connection never reaches a real call)."""
        try:
            conn = Connection(self.path, writable, governed)
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open the tenant database: {exc}") from exc
        try:
            return fn(conn, *args)
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        for pool in self.idle.values():
            while pool:
                pool.pop().close()


def _take(pool: list[Connection], guard: Guard | None) -> Connection:
    """The most recently used connection, or for a governed call the last one set up for its subject."""
    if guard is not None:
        key = guard.key
        for index in range(len(pool) - 1, -1, -1):
            shield = pool[index].shield
            if shield is not None and shield.key is not None and shield.key[:2] == key:
                return pool.pop(index)
    return pool.pop()


class SqliteTenants(TenantSql):
    backend = BACKEND

    def __init__(self, folder: Path, db: PlatformDb, book: PolicyBook | None = None) -> None:
        self._folder = folder
        self._db = db
        self._book = book if book is not None else PolicyBook(db)
        self._tenants: OrderedDict[str, _Tenant] = OrderedDict()
        self._blocking = Blocking("data-sqlite", WORKERS)
        self._provisioning = asyncio.Lock()

    async def query(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> QueryResult:
        statement = scan(sql)
        guard = await self._guard(caller)
        bound = _bind(statement, params)
        return await self._run(caller, guard, Connection.query, statement.text, bound, limits, guard)

    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]:
        # The schema is no secret a policy keeps: listed from a connection without shadow views, so governed
        # tables show their real keys and defaults.
        return await self._run(caller, None, Connection.list_tables, limits)

    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan:
        statement = scan(sql)
        guard = await self._guard(caller)
        bound = _bind(statement, params)
        return await self._run(caller, guard, Connection.explain, statement.text, bound, limits, guard)

    async def apply_policies(self, tenant: str, documents: Documents, revision: int) -> list[str]:
        """ApplyPolicies on SQLite: a compile check of the whole set against the tenant's tables (the policies
        are read per call, so there is nothing to store); the tables governed by it. InvalidArgument names the
        policy, table and column a rule cannot be compiled for."""
        policies = compile_set(documents, revision)
        subject = {"sub": "", "tenant": tenant, "roles": []}
        admin = Caller(checked_tenant(tenant), True)
        return await self._run(admin, None, _compile_check, policies, subject)

    async def probe_policies(
        self, tenant: str, documents: Documents, table: str, subject: Subject, limit: int, limits: Limits
    ) -> Probe:
        """The live dry run (sqlite_probe): as the subject, under `documents` (stored or not), on a connection
        of its own, in a transaction that is rolled back. InvalidArgument names an invalid part of a policy,
        an unknown table, or the table and column a rule cannot be compiled for."""
        policies = compile_set(documents)
        kind = probe_kind(subject)
        guard = Guard(policies, dict(subject)) if kind != ADMIN and governs_tables(policies) else None
        opened = self._tenants.get(tenant) or await self._open(tenant)
        self._tenants.move_to_end(tenant)
        async with opened.slots:
            return await self._blocking.run(
                opened.alone, kind == WRITER, guard is not None, probe, guard, table, kind, limit, limits
            )

    async def close(self) -> None:
        for tenant in self._tenants.values():
            await self._blocking.run(tenant.close)
        self._tenants.clear()
        self._blocking.shutdown()

    async def _guard(self, caller: Caller) -> Guard | None:
        """What governs the call: None for admins and for tenants whose policies name no table."""
        if not caller.governed:
            return None
        policies: PolicySet = await self._book.current(caller.tenant)
        if not governs_tables(policies):
            return None
        return Guard(policies, dict(caller.subject))

    async def _run(self, caller: Caller, guard: Guard | None, fn: Callable[..., T], *args: Any) -> T:
        tenant = self._tenants.get(caller.tenant) or await self._open(caller.tenant)
        self._tenants.move_to_end(caller.tenant)
        keep = not caller.governed  # temp objects of developers and viewers never outlive their call
        async with tenant.slots:
            return await self._blocking.run(tenant.run, caller.writable, guard, keep, fn, *args)

    async def _open(self, name: str) -> _Tenant:
        """First use of a tenant in this process: create its file (idempotent) and record it."""
        async with self._provisioning:
            if name in self._tenants:
                return self._tenants[name]
            path = self._folder / f"{checked_tenant(name)}.sqlite"
            await self._blocking.run(_create_file, path)
            await self._db.execute(_RECORD, (name, BACKEND, LAYOUT))
            tenant = self._tenants[name] = _Tenant(path)
            while len(self._tenants) > MAX_OPEN_TENANTS:  # close the least recently used tenant's files
                await self._blocking.run(self._tenants.popitem(last=False)[1].close)
            return tenant


def _compile_check(conn: Connection, policies: PolicySet, subject: Mapping[str, Any]) -> list[str]:
    try:
        return compile_check(conn.conn, policies, read_schema(conn.conn), subject)
    except sqlite3.Error as exc:
        raise InvalidArgument(f"a policy does not compile on this tenant's tables: {exc}") from exc
    finally:
        conn._end_transaction()


LAYOUT = 1  # bump when provisioning changes; recorded per tenant in data_tenants
_RECORD = """
INSERT INTO data_tenants (tenant, backend, layout) VALUES (?, ?, ?)
ON CONFLICT (tenant) DO UPDATE SET backend = excluded.backend, layout = excluded.layout
"""


def _create_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
        finally:
            conn.close()
        os.chmod(path, 0o600)
    except (sqlite3.Error, OSError) as exc:
        raise Unavailable(f"cannot create the tenant database: {exc}") from exc


def _bind(statement: Statement, params: list[Any]) -> list[Any] | dict[str, Any]:
    """$N parameters bind by number, as on PostgreSQL (SQLite would number them by first appearance);
    `?` parameters bind in order, and SQLite checks their count."""
    values = [_param(p) for p in params]
    if not statement.params:
        return values
    if statement.param_count != len(values):
        raise InvalidArgument(
            f"the statement uses {statement.param_count} parameter(s) ($1..$N) but {len(values)} were given"
        )
    return {str(number): value for number, value in enumerate(values, 1)}


def _param(value: Any) -> Any:
    """SQLite has no decimal or JSON type: both travel as text (bool binds as an int)."""
    if isinstance(value, Json):
        return orjson.dumps(value.value).decode()
    return str(value) if isinstance(value, Decimal) else value
