"""Who is calling and why: the per-call context set by the interceptor and read by domain code."""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field
from typing import Any

WRITE_ROLES = frozenset({"admin", "developer"})
PLATFORM_TENANT = "default"
# Tenant names become file, schema and role names (data service): one pattern for every service.
TENANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
ROLES = {
    "admin": "Everything in the tenant, never governed by its policies, which only admins write; the platform admin (tenant 'default') also manages other tenants.",
    "developer": "Reads and writes data, storage and deployments of the tenant, as its policies allow.",
    "viewer": "Reads only.",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller: the token's claims, nothing taken from client headers."""

    subject: str
    tenant: str
    roles: tuple[str, ...]
    token_id: str = ""
    expires_at: int = 0

    @property
    def can_write(self) -> bool:
        return any(role in WRITE_ROLES for role in self.roles)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_platform_admin(self) -> bool:
        return self.is_admin and self.tenant == PLATFORM_TENANT


@dataclass(slots=True)
class CallContext:
    """One RPC: its request id, the verified principal (None for public RPCs) and audit extras."""

    request_id: str
    method: str
    principal: Principal | None = None
    audit: dict[str, Any] = field(default_factory=dict)

    @property
    def actor(self) -> str:
        return self.principal.subject if self.principal else "anonymous"

    @property
    def tenant(self) -> str:
        return self.principal.tenant if self.principal else ""


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("launchpad_call", default=None)


def current_call() -> CallContext:
    """The context of the RPC being served; raises outside of one (a programming error)."""
    call = _current.get()
    if call is None:
        raise RuntimeError("no launchpad call context: called outside an RPC")
    return call


def current_principal() -> Principal:
    principal = current_call().principal
    if principal is None:
        raise RuntimeError("public RPC has no principal")
    return principal


def bind_call(call: CallContext | None) -> contextvars.Token:
    return _current.set(call)


def reset_call(token: contextvars.Token) -> None:
    _current.reset(token)


def current_tenant() -> str:
    """The tenant of the RPC being served, "" outside one or for public RPCs (logs carry it)."""
    call = _current.get()
    return call.tenant if call else ""


def current_request_id() -> str:
    call = _current.get()
    return call.request_id if call else ""
