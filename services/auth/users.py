"""User administration: validation, tenant rules and the guards that keep the platform administrable.

Rules (the README documents them):
- a user belongs to one tenant; usernames are unique across the platform (they are the login name);
- every principal sees the users of its own tenant; the platform admin (role admin in tenant "default") sees
  and manages every tenant, and is the only one who may create a user in another tenant, which creates it;
- a user of another tenant is "not found", never "forbidden", so its existence is not revealed;
- nobody deletes or disables themselves, and the last active platform admin cannot be deleted, disabled or
  lose the admin role.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from services.auth.passwords import Passwords
from services.auth.store import AuthStore, UserRecord
from services.core.context import PLATFORM_TENANT, ROLES, TENANT_NAME, Principal
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,62}$")
# Tenant names become PostgreSQL schema and role names in the data service: keep clear of the system ones.
RESERVED_TENANTS = frozenset({"public", "launchpad", "information_schema"})
MIN_PASSWORD, MAX_PASSWORD = 8, 1024


def now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------------------------- validation


def validate_username(username: str) -> str:
    if not USERNAME.match(username):
        raise InvalidArgument(
            "username must be 2-63 characters: lowercase letters, digits, '_', '.', '-', "
            "starting with a letter or digit",
            field="username",
        )
    return username


def validate_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidArgument(
            f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters", field="password"
        )
    return password


def validate_roles(roles: Iterable[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(roles))
    unknown = [role for role in unique if role not in ROLES]
    if not unique or unknown:
        raise InvalidArgument(
            f"roles must be a non-empty subset of {', '.join(ROLES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
            field="roles",
        )
    return unique


def validate_tenant(tenant: str) -> str:
    if not TENANT_NAME.match(tenant) or tenant in RESERVED_TENANTS or tenant.startswith("pg_"):
        raise InvalidArgument(
            "tenant must be 1-40 characters: lowercase letters, digits and '_', starting with a letter "
            "(not pg_*, public, launchpad or information_schema)",
            field="tenant",
        )
    return tenant


def is_active_platform_admin(user: UserRecord) -> bool:
    return user.tenant == PLATFORM_TENANT and "admin" in user.roles and not user.disabled


def can_see(caller: Principal, tenant: str) -> bool:
    return caller.is_platform_admin or caller.tenant == tenant


# ---------------------------------------------------------------------------------------------- service


@dataclass(frozen=True, slots=True)
class NewUser:
    username: str
    password: str
    roles: tuple[str, ...]
    tenant: str = ""  # empty: the creator's


@dataclass(frozen=True, slots=True)
class UserChange:
    password: str | None = None
    roles: tuple[str, ...] = ()  # empty: unchanged
    disabled: bool | None = None


class Users:
    def __init__(self, store: AuthStore, passwords: Passwords) -> None:
        self._store = store
        self._passwords = passwords

    async def list(self, caller: Principal) -> list[UserRecord]:
        return await self._store.list_users(None if caller.is_platform_admin else caller.tenant)

    async def get(self, caller: Principal, username: str) -> UserRecord:
        user = await self._store.get_user(username)
        if user is None or not can_see(caller, user.tenant):
            raise NotFound(f"user {username!r} not found", field="username")
        return user

    async def me(self, caller: Principal) -> UserRecord:
        """The caller's record; when it is gone (deleted since the token was issued), the token's view."""
        user = await self._store.get_user(caller.subject)
        if user is not None and user.tenant == caller.tenant:
            return user
        return UserRecord(caller.subject, caller.tenant, caller.roles, False, 0, 0, "")

    async def create(self, caller: Principal, new: NewUser) -> UserRecord:
        username, password = validate_username(new.username), validate_password(new.password)
        roles = validate_roles(new.roles)
        tenant = validate_tenant(new.tenant) if new.tenant else caller.tenant
        if tenant != caller.tenant and not caller.is_platform_admin:
            raise PermissionDenied(
                "only the platform admin may create users in another tenant", field="tenant"
            )
        now = now_ms()
        user = UserRecord(
            username=username,
            tenant=tenant,
            roles=roles,
            disabled=False,
            created_at=now,
            updated_at=now,
            created_by=caller.subject,
            password_hash=await self._passwords.hash(password),
        )
        await self._store.ensure_tenant(tenant, caller.subject, now)
        await self._store.insert_user(user)
        return user

    async def update(self, caller: Principal, username: str, change: UserChange) -> UserRecord:
        # Fields first: a 400 says nothing about whether the user exists.
        password = None if change.password is None else validate_password(change.password)
        roles = validate_roles(change.roles) if change.roles else None
        user = await self.get(caller, username)
        updated = replace(
            user,
            roles=roles or user.roles,
            disabled=user.disabled if change.disabled is None else change.disabled,
            updated_at=now_ms(),
        )
        if updated.disabled and not user.disabled and _is_self(caller, user):
            raise FailedPrecondition("you cannot disable yourself", field="disabled")
        await self._keep_a_platform_admin(user, updated)
        if password is not None:
            updated = replace(updated, password_hash=await self._passwords.hash(password))
        if not await self._store.update_user(updated):
            raise NotFound(f"user {username!r} not found", field="username")
        return updated

    async def delete(self, caller: Principal, username: str) -> None:
        user = await self.get(caller, username)
        if _is_self(caller, user):
            raise FailedPrecondition("you cannot delete yourself", field="username")
        await self._keep_a_platform_admin(user, None)
        if not await self._store.delete_user(username):
            raise NotFound(f"user {username!r} not found", field="username")

    async def _keep_a_platform_admin(self, before: UserRecord, after: UserRecord | None) -> None:
        """Refuses a change that would leave no active platform admin.

        Two admins removing each other at the same instant could both pass; that race needs two platform
        admins acting concurrently and is accepted here.
        """
        if not is_active_platform_admin(before) or (after is not None and is_active_platform_admin(after)):
            return
        others = await self._store.list_users(PLATFORM_TENANT)
        if not any(is_active_platform_admin(u) and u.username != before.username for u in others):
            raise FailedPrecondition(
                f"{before.username!r} is the last platform admin; make another admin in tenant "
                f"{PLATFORM_TENANT!r} first",
                field="username",
            )


def _is_self(caller: Principal, user: UserRecord) -> bool:
    return caller.subject == user.username and caller.tenant == user.tenant
