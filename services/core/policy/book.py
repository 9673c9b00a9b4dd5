"""The policy book: a tenant's stored policies as a compiled PolicySet, for the services that enforce them.

The auth service stores policies in the platform database (services/auth/migrations) and bumps the tenant's
revision in the same transaction as every create, replace and delete. The book reads that revision on every
call (one primary-key lookup) and re-reads and re-compiles the tenant's policies only when it moved, so a
change is seen by the very next query, upload-URL request or subscription, with no restart and no cache
to expire. The revision and the documents are read by one statement, so a set is never a mix of two
revisions.

The tables not existing yet (auth never migrated this database) means no policies: none can have been
stored. Anything else that fails (the database is down) raises: callers must fail closed, never treat
"could not read the policies" as "no policies".
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2.errors

from services.core.db import PlatformDb, open_platform_db
from services.core.errors import FailedPrecondition, InvalidArgument
from services.core.policy import PolicySet, compile_set

if TYPE_CHECKING:
    from services.core.server import Runtime

# open_policy_book's platform database applies no migrations of its own: the tables are auth's. A folder
# that does not exist loads as no migrations (services.core.migrations.load_migrations).
NO_MIGRATIONS = Path(__file__).with_name("no-migrations")
EMPTY = PolicySet()

_REVISION = "SELECT revision FROM auth_policy_revisions WHERE tenant = ?"
# One statement, one snapshot: the revision with the documents it describes (no row: never changed).
_DOCUMENTS = (
    "SELECT r.revision AS revision, p.document AS document FROM auth_policy_revisions r "
    "LEFT JOIN auth_policies p ON p.tenant = r.tenant WHERE r.tenant = ? ORDER BY p.name"
)


@dataclass(frozen=True, slots=True)
class _Read:
    revision: int
    documents: tuple[str, ...]


class PolicyBook:
    """Reads auth's stored policies from the platform database, compiled once per tenant revision."""

    def __init__(self, db: PlatformDb) -> None:
        self._db = db
        self._sets: dict[str, PolicySet] = {}

    async def current(self, tenant: str) -> PolicySet:
        """The tenant's whole policy set as stored now; the empty set when it has none."""
        revision = await self._revision(tenant)
        cached = self._sets.get(tenant)
        if cached is not None and cached.revision == revision:
            return cached
        if revision == 0:
            self._sets.pop(tenant, None)
            return EMPTY
        read = await self._documents(tenant)
        policies = _compile(tenant, read)
        self._sets[tenant] = policies
        return policies

    async def stored(self, tenant: str) -> tuple[int, list[dict[str, object]]]:
        """The tenant's revision and stored documents as auth wrote them, (0, []) when it has none."""
        read = await self._documents(tenant)
        return read.revision, [json.loads(text) for text in read.documents]

    async def _revision(self, tenant: str) -> int:
        try:
            row = await self._db.fetchone(_REVISION, (tenant,))
        except Exception as exc:
            if _missing_table(exc):
                return 0
            raise
        return int(row["revision"]) if row else 0

    async def _documents(self, tenant: str) -> _Read:
        try:
            rows = await self._db.fetchall(_DOCUMENTS, (tenant,))
        except Exception as exc:
            if _missing_table(exc):
                return _Read(0, ())
            raise
        if not rows:
            return _Read(0, ())
        documents = tuple(row["document"] for row in rows if row["document"] is not None)
        return _Read(int(rows[0]["revision"]), documents)


def _compile(tenant: str, read: _Read) -> PolicySet:
    try:
        return compile_set([json.loads(text) for text in read.documents], read.revision)
    except (InvalidArgument, ValueError) as exc:
        # Stored policies were valid when stored; one that no longer parses (the language changed since) must
        # not switch enforcement off: refuse until an admin replaces it.
        reason = exc.message if isinstance(exc, InvalidArgument) else str(exc)
        raise FailedPrecondition(
            f"a stored policy of tenant {tenant!r} no longer compiles ({reason}); "
            "a tenant admin must replace or delete it",
            tenant=tenant,
        ) from None


def _missing_table(exc: BaseException) -> bool:
    """auth's tables do not exist in this database yet (PostgreSQL or SQLite)."""
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        return True
    return isinstance(exc, sqlite3.OperationalError) and str(exc).startswith("no such table")


async def open_policy_book(runtime: Runtime) -> PolicyBook:
    """A book for a service without a platform database of its own (storage, realtime): it opens the platform
    database the way auth does (PostgreSQL when POSTGRES_DSN answers, else the data dir's SQLite file),
    registers it as dependency "sql" and closes it at shutdown."""
    db = await open_platform_db(runtime.settings, runtime.deps, migrations=NO_MIGRATIONS)
    runtime.closers.append(db.close)
    return PolicyBook(db)
