"""Tenant SQL on PostgreSQL: isolation by the database's own roles and databases, not by string checks.

Each tenant has a database of its own and three LOGIN roles (developers, viewers, admins), provisioned on
first use (pg_provision); this service connects AS the tenant's role, so the database itself enforces what a
caller may do. A call is one transaction on a pooled connection of the caller's role (pg_query). Policies are
row-level security on governed tables, with claims set per transaction (pg_rls); the live dry run is pg_probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions as ext

from services.core.blocking import Blocking
from services.core.context import WRITE_ROLES
from services.core.db import PgPlatformDb, PgPool, first_line, pg_unavailable
from services.core.errors import FailedPrecondition, InvalidArgument, ServiceError
from services.core.policy.book import PolicyBook
from services.data import pg_probe, pg_rls
from services.data.model import (
    Caller,
    Documents,
    Limits,
    Plan,
    Probe,
    QueryResult,
    Subject,
    Table,
    TenantSql,
    checked_tenant,
)
from services.data.pg_provision import KINDS, LAYOUT, TenantNames, provision, role_password
from services.data.pg_query import (
    BACKEND,
    Session,
    Stale,
    TenantConnection,
    explain,
    list_tables,
    query,
    role_kind,
)
from services.data.sqltext import scan

T = TypeVar("T")
log = logging.getLogger(__name__)
PER_TENANT = 4
WORKERS = 16
MAX_OPEN_TENANTS = 32


class _LoginRefused(Exception):
    """The tenant role could not log in (dropped, or its password changed): provision again."""


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
            except Stale as exc:
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
        return await self._run(caller, query, scan(sql), params, limits)

    async def list_tables(self, caller: Caller, limits: Limits) -> list[Table]:
        names = await self._names(caller.tenant)
        return await self._run(caller, list_tables, names.schema, limits)

    async def explain(self, caller: Caller, sql: str, params: list[Any], limits: Limits) -> Plan:
        return await self._run(caller, explain, scan(sql), params, limits)

    async def apply_policies(self, tenant: str, documents: Documents, revision: int) -> list[str]:
        """Compiles the tenant's whole policy set against its tables and applies it as row-level security, in
        one transaction of the tenant's database; the tables governed afterwards."""
        names = await self._names(tenant)
        await self._provision(names, force=False, reconcile=False)  # this set supersedes the stored one
        dsn = ext.make_dsn(self._db.dsn, dbname=names.tenant_database)
        return await self._blocking.run(pg_rls.apply, dsn, documents, revision)

    async def probe_policies(
        self, tenant: str, documents: Documents, table: str, subject: Subject, limit: int, limits: Limits
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
                await self._db.run(provision, self._db.dsn, names, passwords, self._max_timeout_ms, key)
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
