"""Auth's tables on the platform database (PostgreSQL or SQLite, same SQL): tenants, users, policies."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
        row["tenant"], row["name"], json.loads(row["document"]), int(row["created_at"]), row["created_by"]
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
        columns = "tenant, name, document, created_at, created_by"
        if tenant is None:
            rows = await self.db.fetchall(f"SELECT {columns} FROM auth_policies ORDER BY tenant, name")
        else:
            rows = await self.db.fetchall(
                f"SELECT {columns} FROM auth_policies WHERE tenant = ? ORDER BY name", (tenant,)
            )
        return [_policy(row) for row in rows]

    async def insert_policy(self, policy: PolicyRecord) -> None:
        document = json.dumps(policy.document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            await self.db.execute(
                "INSERT INTO auth_policies (tenant, name, document, created_at, created_by) VALUES (?, ?, ?, ?, ?)",
                (policy.tenant, policy.name, document, policy.created_at, policy.created_by),
            )
        except UniqueViolation:
            raise AlreadyExists(
                f"policy {policy.name!r} already exists in tenant {policy.tenant!r}", field="name"
            ) from None
