"""Stored policies (per tenant) and dry runs of a policy against sample records."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from services.auth.store import AuthStore, PolicyRecord
from services.auth.users import can_see, now_ms
from services.core.context import Principal
from services.core.errors import NotFound, PermissionDenied
from services.core.policy import Decision, dry_run, parse_policy


def caller_subject(caller: Principal) -> dict[str, Any]:
    """What `$subject.<field>` means when the dry run names no subject."""
    return {"sub": caller.subject, "tenant": caller.tenant, "roles": list(caller.roles)}


class PolicyAdmin:
    def __init__(self, store: AuthStore) -> None:
        self._store = store

    async def list(self, caller: Principal) -> list[PolicyRecord]:
        """The caller's tenant's policies; every tenant's for the platform admin."""
        return await self._store.list_policies(None if caller.is_platform_admin else caller.tenant)

    async def create(self, caller: Principal, document: Mapping[str, Any], tenant: str = "") -> PolicyRecord:
        """Validates and stores a policy in the caller's tenant (the platform admin may name another)."""
        policy = parse_policy(document)
        tenant = tenant or caller.tenant
        if not can_see(caller, tenant):
            raise PermissionDenied("policies can only be created in your own tenant", field="tenant")
        now = now_ms()
        if tenant == caller.tenant:
            await self._store.ensure_tenant(tenant, caller.subject, now)
        elif not await self._store.tenant_exists(tenant):
            raise NotFound(f"tenant {tenant!r} not found", field="tenant")
        record = PolicyRecord(tenant, policy.name, dict(document), now, caller.subject)
        await self._store.insert_policy(record)
        return record

    async def dry_run(
        self,
        caller: Principal,
        document: Mapping[str, Any],
        records: Sequence[Mapping[str, Any]],
        action: str,
        resource: str,
        subject: Mapping[str, Any] | None = None,
    ) -> list[Decision]:
        """One decision per record; the subject defaults to the caller (sub, tenant, roles).

        Evaluation is pure CPU (bounded by policies.MAX_STEPS): it runs in a worker thread so a large dry run
        does not hold up other calls on the event loop.
        """
        policy = parse_policy(document)
        subject = subject or caller_subject(caller)
        return await asyncio.to_thread(dry_run, policy, records, action, resource, subject)
