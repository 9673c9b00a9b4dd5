"""Auth's tables on the platform database (PostgreSQL or SQLite, same SQL): tenants, users, policies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.core.db import PlatformDb, Row, UniqueViolation
from services.core.errors import AlreadyExists

_USER_COLUMNS = "username, tenant, password_hash, roles, disabled, created_at, updated_at, created_by"


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    tenant: str
    roles: tuple[str, ...]
    disabled: bool
    created_at: int  # epoch milliseconds
    updated_at: int
    created_by: str
    password_hash: str = field(repr=False, default="")  # never logged, never returned


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    tenant: str
    name: str
    document: dict[str, Any]  # the validated policy JSON: {name, rules}
    created_at: int
    created_by: str
    updated_at: int = 0  # epoch milliseconds of the last replacement; created_at until then
    updated_by: str = ""

    @property
    def sha256(self) -> str:
        """The sha256 of the stored text (the audit log names it)."""
        return hashlib.sha256(canonical(self.document).encode()).hexdigest()


def canonical(document: dict[str, Any]) -> str:
    """The stored form of a policy: canonical JSON (sorted keys, no spaces), so equal policies hash equally."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Sql(Protocol):
    """What the statements need: a PlatformDb, or one of its transactions (services.core.db.Transaction)."""

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...


def _user(row: Row) -> UserRecord:
    return UserRecord(
        username=row["username"],
        tenant=row["tenant"],
        roles=tuple(role for role in row["roles"].split(",") if role),
        disabled=bool(row["disabled"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
        created_by=row["created_by"],
        password_hash=row["password_hash"],
    )


def _policy(row: Row) -> PolicyRecord:
    return PolicyRecord(
        tenant=row["tenant"],
        name=row["name"],
        document=json.loads(row["document"]),
        created_at=int(row["created_at"]),
        created_by=row["created_by"],
        updated_at=int(row["updated_at"]),
        updated_by=row["updated_by"],
    )


class AuthStore:
    def __init__(self, db: PlatformDb) -> None:
        self.db = db

    # --- tenants

    async def ensure_tenant(self, name: str, created_by: str, now_ms: int) -> None:
        """Insert-if-absent: safe when several replicas or requests create the same tenant at once."""
        await self.db.execute(
            "INSERT INTO auth_tenants (name, created_at, created_by) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, now_ms, created_by),
        )

    async def tenant_exists(self, name: str) -> bool:
        return await self.db.fetchone("SELECT 1 AS one FROM auth_tenants WHERE name = ?", (name,)) is not None

    # --- users

    async def get_user(self, username: str) -> UserRecord | None:
        row = await self.db.fetchone(
            f"SELECT {_USER_COLUMNS} FROM auth_users WHERE username = ?", (username,)
        )
        return _user(row) if row else None

    async def list_users(self, tenant: str | None) -> list[UserRecord]:
        """The users of one tenant, or of every tenant when tenant is None."""
        if tenant is None:
            sql, params = f"SELECT {_USER_COLUMNS} FROM auth_users ORDER BY tenant, username", ()
        else:
            sql = f"SELECT {_USER_COLUMNS} FROM auth_users WHERE tenant = ? ORDER BY username"
            params = (tenant,)
        return [_user(row) for row in await self.db.fetchall(sql, params)]

    async def insert_user(self, user: UserRecord) -> None:
        try:
            await self.db.execute(
                f"INSERT INTO auth_users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user.username,
                    user.tenant,
                    user.password_hash,
                    ",".join(user.roles),
                    user.disabled,
                    user.created_at,
                    user.updated_at,
                    user.created_by,
                ),
            )
        except UniqueViolation:
            raise AlreadyExists(f"user {user.username!r} already exists", field="username") from None

    async def update_user(self, user: UserRecord) -> bool:
        count = await self.db.execute(
            "UPDATE auth_users SET password_hash = ?, roles = ?, disabled = ?, updated_at = ? WHERE username = ?",
            (user.password_hash, ",".join(user.roles), user.disabled, user.updated_at, user.username),
        )
        return count > 0

    async def delete_user(self, username: str) -> bool:
        return await self.db.execute("DELETE FROM auth_users WHERE username = ?", (username,)) > 0

    # --- policies

    async def list_policies(self, tenant: str | None) -> list[PolicyRecord]:
        return await Policies(self.db).list(tenant)

    async def get_policy(self, tenant: str, name: str) -> PolicyRecord | None:
        return await Policies(self.db).get(tenant, name)

    async def policy_revision(self, tenant: str) -> int:
        return await Policies(self.db).revision(tenant)

    @asynccontextmanager
    async def policy_transaction(self) -> AsyncIterator[Policies]:
        """One change of a tenant's policies: every statement commits together, or none does."""
        async with self.db.transaction() as tx:
            yield Policies(tx)


_POLICY_COLUMNS = "tenant, name, document, created_at, created_by, updated_at, updated_by"


class Policies:
    """The policy statements, on the database or inside one transaction."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql

    async def ensure_tenant(self, name: str, created_by: str, now_ms: int) -> None:
        await self.sql.execute(
            "INSERT INTO auth_tenants (name, created_at, created_by) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO NOTHING",
            (name, now_ms, created_by),
        )

    async def tenant_exists(self, name: str) -> bool:
        return (
            await self.sql.fetchone("SELECT 1 AS one FROM auth_tenants WHERE name = ?", (name,)) is not None
        )

    async def bump_revision(self, tenant: str) -> int:
        """The tenant's next revision. In a transaction this locks the tenant's row until the end, so
        concurrent changes of one tenant (from any replica) happen one after the other."""
        row = await self.sql.fetchone(
            "INSERT INTO auth_policy_revisions (tenant, revision) VALUES (?, 1) "
            "ON CONFLICT (tenant) DO UPDATE SET revision = auth_policy_revisions.revision + 1 "
            "RETURNING revision",
            (tenant,),
        )
        assert row is not None  # an upsert with RETURNING always returns its row
        return int(row["revision"])

    async def lock_revision(self, tenant: str) -> int:
        """The tenant's revision, unchanged, with its row locked like bump_revision (0: never changed)."""
        row = await self.sql.fetchone(
            "UPDATE auth_policy_revisions SET revision = revision WHERE tenant = ? RETURNING revision",
            (tenant,),
        )
        return int(row["revision"]) if row else 0

    async def revision(self, tenant: str) -> int:
        row = await self.sql.fetchone(
            "SELECT revision FROM auth_policy_revisions WHERE tenant = ?", (tenant,)
        )
        return int(row["revision"]) if row else 0

    async def list(self, tenant: str | None) -> list[PolicyRecord]:
        """The policies of one tenant, or of every tenant when tenant is None."""
        if tenant is None:
            rows = await self.sql.fetchall(
                f"SELECT {_POLICY_COLUMNS} FROM auth_policies ORDER BY tenant, name"
            )
        else:
            rows = await self.sql.fetchall(
                f"SELECT {_POLICY_COLUMNS} FROM auth_policies WHERE tenant = ? ORDER BY name", (tenant,)
            )
        return [_policy(row) for row in rows]

    async def get(self, tenant: str, name: str) -> PolicyRecord | None:
        row = await self.sql.fetchone(
            f"SELECT {_POLICY_COLUMNS} FROM auth_policies WHERE tenant = ? AND name = ?", (tenant, name)
        )
        return _policy(row) if row else None

    async def insert(self, policy: PolicyRecord) -> None:
        try:
            await self.sql.execute(
                f"INSERT INTO auth_policies ({_POLICY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    policy.tenant,
                    policy.name,
                    canonical(policy.document),
                    policy.created_at,
                    policy.created_by,
                    policy.updated_at or policy.created_at,
                    policy.updated_by or policy.created_by,
                ),
            )
        except UniqueViolation:
            raise AlreadyExists(
                f"policy {policy.name!r} already exists in tenant {policy.tenant!r}", field="name"
            ) from None

    async def update(self, policy: PolicyRecord) -> bool:
        """Replaces the document; created_at/created_by stay as they were."""
        count = await self.sql.execute(
            "UPDATE auth_policies SET document = ?, updated_at = ?, updated_by = ? WHERE tenant = ? AND name = ?",
            (canonical(policy.document), policy.updated_at, policy.updated_by, policy.tenant, policy.name),
        )
        return count > 0

    async def delete(self, tenant: str, name: str) -> bool:
        return (
            await self.sql.execute("DELETE FROM auth_policies WHERE tenant = ? AND name = ?", (tenant, name))
            > 0
        )
