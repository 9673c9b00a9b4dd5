"""Stored policies (per tenant): who may read and change them, how a change is applied, and dry runs.

Rules (the README documents them):
- tenant admins create, replace and delete their tenant's policies; developers and viewers list, read and
  dry-run them (the contract says so too: the kit refuses other roles before any of this runs);
- the platform admin (role admin in tenant "default") may name another, existing, tenant;
- a change is applied before it is stored: in one transaction per change, the tenant's revision is bumped
  (which serializes concurrent changes of one tenant, across replicas), the row is written, the data service
  applies the tenant's whole new set, and only then the transaction commits. A refusal by the data service
  rolls everything back; a commit that fails after the set was applied re-applies the stored set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.auth.enforcement import Enforcer
from services.auth.store import AuthStore, Policies, PolicyRecord
from services.auth.users import can_see, now_ms
from services.core.context import Principal
from services.core.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, ServiceError
from services.core.policy import Decision, dry_run, parse_policy

log = logging.getLogger("launchpad.auth.policies")
ADMINS_ONLY = (
    "only tenant admins may create, replace or delete policies; developers and viewers may list, read "
    "and dry-run them"
)


def caller_subject(caller: Principal) -> dict[str, Any]:
    """What `$subject.<field>` means when the dry run names no subject."""
    return {"sub": caller.subject, "tenant": caller.tenant, "roles": list(caller.roles)}


@dataclass(frozen=True, slots=True)
class Change:
    """One stored change: the policy as stored (as it was, for a delete) and the tenant's new revision."""

    policy: PolicyRecord
    revision: int
    created: bool = False  # a replace that found no policy of that name
    previous: PolicyRecord | None = None  # what a replace or delete changed


# An edit runs inside the change's transaction: (statements, the tenant's policies before) -> the change.
Edit = Callable[[Policies, list[PolicyRecord]], Awaitable[tuple[PolicyRecord, bool, PolicyRecord | None]]]


class PolicyAdmin:
    def __init__(self, store: AuthStore, enforcer: Enforcer) -> None:
        self._store = store
        self._enforcer = enforcer

    # --- reading

    async def list(self, caller: Principal) -> list[PolicyRecord]:
        """The caller's tenant's policies; every tenant's for the platform admin."""
        return await self._store.list_policies(None if caller.is_platform_admin else caller.tenant)

    async def get(self, caller: Principal, name: str, tenant: str = "") -> PolicyRecord:
        tenant = tenant_for(caller, tenant)
        policy = await self._store.get_policy(tenant, name)
        if policy is None:
            raise NotFound(f"policy {name!r} not found in tenant {tenant!r}", field="name")
        return policy

    # --- changing

    async def create(self, caller: Principal, document: Mapping[str, Any], tenant: str = "") -> Change:
        """Validates and stores a new policy; 409 when the tenant has one of that name."""
        policy = parse_policy(document)
        tenant = _writable_tenant(caller, tenant)
        now = now_ms()
        record = PolicyRecord(tenant, policy.name, dict(document), now, caller.subject, now, caller.subject)

        async def edit(tx: Policies, before: list[PolicyRecord]) -> tuple[PolicyRecord, bool, None]:
            if _named(before, record.name):
                raise AlreadyExists(
                    f"policy {record.name!r} already exists in tenant {tenant!r}", field="name"
                )
            await tx.insert(record)
            return record, True, None

        return await self._change(caller, tenant, edit)

    async def replace(
        self, caller: Principal, name: str, document: Mapping[str, Any], tenant: str = ""
    ) -> Change:
        """Creates the policy or replaces the stored one of that name, whole (a PUT). The name comes from the
        path; the document's name may be left out and must match it when given."""
        given = document.get("name")
        if given and given != name:
            raise InvalidArgument(
                f"the policy's name {given!r} does not match {name!r} in the path: "
                "leave it out or make them equal (to rename, create the new name and delete the old one)",
                field="policy.name",
            )
        document = {**document, "name": name}
        parse_policy(document)
        tenant = _writable_tenant(caller, tenant)
        now = now_ms()

        async def edit(
            tx: Policies, before: list[PolicyRecord]
        ) -> tuple[PolicyRecord, bool, PolicyRecord | None]:
            previous = _named(before, name)
            if previous is None:
                record = PolicyRecord(tenant, name, dict(document), now, caller.subject, now, caller.subject)
                await tx.insert(record)
                return record, True, None
            record = replace(previous, document=dict(document), updated_at=now, updated_by=caller.subject)
            await tx.update(record)
            return record, False, previous

        return await self._change(caller, tenant, edit)

    async def delete(self, caller: Principal, name: str, tenant: str = "") -> Change:
        """Deletes the policy; 404 when the tenant has none of that name."""
        tenant = _writable_tenant(caller, tenant)

        async def edit(tx: Policies, before: list[PolicyRecord]) -> tuple[PolicyRecord, bool, PolicyRecord]:
            previous = _named(before, name)
            if previous is None or not await tx.delete(tenant, name):
                raise NotFound(f"policy {name!r} not found in tenant {tenant!r}", field="name")
            return previous, False, previous

        return await self._change(caller, tenant, edit)

    async def _change(self, caller: Principal, tenant: str, edit: Edit) -> Change:
        """Runs the change to its end even when the call is cancelled (the client went away, a deadline): a
        change cut between the data service's apply and auth's commit would leave them disagreeing."""
        task = asyncio.ensure_future(self._change_now(caller, tenant, edit))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _change_now(self, caller: Principal, tenant: str, edit: Edit) -> Change:
        """Bump (and lock) the revision, edit the row, apply the whole new set, commit: see the module doc."""
        before: list[PolicyRecord] = []
        revision, applied = 0, False
        try:
            async with self._store.policy_transaction() as tx:
                await _ensure_tenant(tx, caller, tenant)
                revision = await tx.bump_revision(tenant)
                before = await tx.list(tenant)
                stored, created, previous = await edit(tx, before)
                after = await tx.list(tenant)
                await self._enforcer.apply(tenant, [p.document for p in after], revision)
                applied = True
        except Exception:
            if applied:  # only the commit can fail after the apply: enforce what is stored again
                await self._reapply(tenant, before, revision - 1)
            raise
        return Change(stored, revision, created, previous)

    async def _reapply(self, tenant: str, before: list[PolicyRecord], revision: int) -> None:
        """After a failed commit: applies the stored set under the tenant's lock (so no concurrent change is
        undone); when the database cannot even be read, the set from before the change."""
        try:
            async with self._store.policy_transaction() as tx:
                stored_revision = await tx.lock_revision(tenant)
                stored = await tx.list(tenant)
                await self._enforcer.apply(tenant, [p.document for p in stored], stored_revision)
            return
        except Exception as exc:
            log.warning("re-applying the stored policies failed; applying the previous set", extra={
                "tenant": tenant, "reason": str(exc)})  # fmt: skip
        try:
            await self._enforcer.apply(tenant, [p.document for p in before], revision)
        except Exception as exc:
            log.error(
                "the data service enforces policies that were not stored, and re-applying failed: "
                "change the tenant's policies again to re-apply them",
                extra={"tenant": tenant, "reason": str(exc)},
            )

    # --- dry run

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


def tenant_for(caller: Principal, tenant: str) -> str:
    """The tenant a call is about: the caller's, or one the platform admin names."""
    tenant = tenant or caller.tenant
    if not can_see(caller, tenant):
        raise PermissionDenied(
            "you can only see and change the policies of your own tenant (leave tenant out)", field="tenant"
        )
    return tenant


def _writable_tenant(caller: Principal, tenant: str) -> str:
    # The contract lets only admins call the changing RPCs; this keeps the rule true for any other caller.
    if not caller.is_admin:
        raise PermissionDenied(ADMINS_ONLY)
    return tenant_for(caller, tenant)


async def _ensure_tenant(tx: Policies, caller: Principal, tenant: str) -> None:
    """The caller's own tenant is created on first use; another one (platform admin) must exist."""
    if tenant == caller.tenant:
        await tx.ensure_tenant(tenant, caller.subject, now_ms())
    elif not await tx.tenant_exists(tenant):
        raise NotFound(f"tenant {tenant!r} not found", field="tenant")


def _retrieve(task: asyncio.Future[Change]) -> None:
    """A change whose caller was cancelled still ends; its error (the caller's, already gone) is only logged."""
    if not task.cancelled() and (exc := task.exception()) is not None and not isinstance(exc, ServiceError):
        log.error("a policy change failed after its caller went away", exc_info=exc)


def _named(policies: list[PolicyRecord], name: str) -> PolicyRecord | None:
    return next((p for p in policies if p.name == name), None)
