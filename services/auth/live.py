"""The live dry run: what a subject may do with a table's real rows, a bucket's objects or a topic.

The answer comes from the enforcing code itself, never from a second implementation: tables from the data
service (the tenant's row-level security or SQLite views, inside a transaction it rolls back), buckets from
the storage service (the Gate its listings and signed URLs use), topics from services.core.policy.access
(the decision the realtime service makes at join and publish). Nothing is written, nothing is stored.

The policy set is the tenant's stored one; an admin may add a candidate policy (replacing the stored policy
of its name), evaluated as if stored. The subject is the caller unless an admin names another.

Security: a live dry run shows real data, so it is only as open as the data is.
- Developers and viewers may run it only as themselves on the stored set: a candidate policy or another
  subject would let them read what they may not (dry-run `allow read on *`, or run as a colleague). Those are
  403 for them. What they get is only what they may read, as a SELECT or a listing would show it.
- A probe may look at rows or objects the subject may not see (SQLite's looks at the first `limit` rows of
  the table; storage decides every object, so an admin sees which are hidden from the subject). A
  non-admin's probe therefore always looks at MAX_LIMIT, whatever limit it asks for, and keeps the readable
  ones: with a look of its choosing, `truncated` would count what it may not see (limit 5: truncated, limit
  6: not -> a sixth, hidden, one exists). Tables keep only readable rows for admins too, so both SQL
  backends answer alike.
- Admins may do anything in their tenant, the platform admin in any existing tenant.
Every live dry run is audited with its target, subject and candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from services.auth.policy_admin import caller_subject, tenant_for
from services.auth.probes import Entry, Probed, Prober
from services.auth.store import AuthStore
from services.core.context import Principal, current_call
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.core.policy import compile_set, parse_policy
from services.core.policy.access import (
    check_topic,
    checked_subject,
    subject_governed,
    subject_writes,
    topic_access,
    topic_record,
    topic_resource,
)

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
MAX_NAME = 128
KINDS = ("table", "bucket", "topic")
ADMINS_ONLY = (
    "only tenant admins may run a live dry run {what}: it shows real data. Run it as yourself on the "
    "stored policies (leave policy and subject out), or ask a tenant admin"
)


@dataclass(frozen=True, slots=True)
class LiveRequest:
    kind: str  # "table", "bucket", "topic"; "" when the request named none
    name: str
    limit: int = 0  # 0: DEFAULT_LIMIT
    tenant: str = ""  # "": the caller's
    candidate: Mapping[str, Any] | None = None  # a policy document to evaluate as if stored
    policy_tenant: str = ""  # the candidate's policy.tenant, when given
    subject: Mapping[str, Any] | None = None  # None: the caller


@dataclass(frozen=True, slots=True)
class LiveResult:
    resource: str
    governed: bool
    entries: list[Entry]
    truncated: bool


class LiveDryRun:
    def __init__(self, store: AuthStore, prober: Prober) -> None:
        self._store = store
        self._prober = prober

    async def run(self, caller: Principal, request: LiveRequest) -> LiveResult:
        kind, name = _target(request)
        _audit_target(kind, name)
        limit = _limit(request.limit)
        tenant = await self._tenant(caller, request)
        subject = _subject(caller, request, tenant)  # the 403s come before any look at the candidate
        _audit_subject(tenant, subject, request.candidate)
        if request.candidate is not None:
            parse_policy(request.candidate)  # a 400 naming the offending part
        documents = await self._documents(tenant, request.candidate)
        if kind == "topic":
            result = _topic(documents, subject, name)
        else:
            # Non-admins: a fixed look (see the module doc), then only its readable part, so that varying the
            # limit tells nothing of the rows or objects they may not see.
            looked = MAX_LIMIT if not caller.is_admin else limit
            probe = self._prober.table if kind == "table" else self._prober.bucket
            probed = _roles_first(subject, await probe(tenant, documents, name, subject, looked))
            resource = name if kind == "table" else f"storage:{name}"
            result = LiveResult(resource, probed.governed, probed.entries, probed.truncated)
            # Tables: only readable rows for everyone, so both backends answer alike (PostgreSQL's probe lists
            # nothing else: its writes reach readable rows only).
            if not caller.is_admin or kind == "table":
                result = _readable(result, limit)
        current_call().audit.update(governed=result.governed, entries=len(result.entries))
        return result

    async def _tenant(self, caller: Principal, request: LiveRequest) -> str:
        """The target's tenant: live.tenant (or the candidate's policy.tenant); the caller's by default."""
        if request.tenant and request.policy_tenant and request.policy_tenant != request.tenant:
            raise InvalidArgument(
                f"policy.tenant {request.policy_tenant!r} differs from live.tenant {request.tenant!r}: "
                "leave one of them out",
                field="policy.tenant",
            )
        tenant = tenant_for(caller, request.tenant or request.policy_tenant)
        if tenant != caller.tenant and not await self._store.tenant_exists(tenant):
            raise NotFound(f"tenant {tenant!r} not found", field="live.tenant")
        return tenant

    async def _documents(self, tenant: str, candidate: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """The stored set, with the candidate added or replacing the stored policy of its name."""
        stored = [p.document for p in await self._store.list_policies(tenant)]
        try:
            compile_set(stored)
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"a stored policy of tenant {tenant!r} no longer compiles ({exc.message}); "
                "a tenant admin must replace or delete it"
            ) from None
        if candidate is None:
            return stored
        document = {"name": candidate["name"], "rules": candidate["rules"]}
        return [d for d in stored if d.get("name") != document["name"]] + [document]


def _target(request: LiveRequest) -> tuple[str, str]:
    if request.kind not in KINDS:
        raise InvalidArgument("live needs a target: one of table, bucket or topic", field="live")
    where = f"live.{request.kind}"
    if not request.name:
        raise InvalidArgument(f"{where} must not be empty", field=where)
    if len(request.name) > MAX_NAME:
        raise InvalidArgument(f"{where} is longer than {MAX_NAME} characters", field=where)
    if request.kind == "topic":
        check_topic(request.name, field=where)
    return request.kind, request.name


def _limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(
            f"live.limit must be 1..{MAX_LIMIT} (leave it out for {DEFAULT_LIMIT}), not {limit}",
            field="live.limit",
        )
    return limit


def _subject(caller: Principal, request: LiveRequest, tenant: str) -> dict[str, Any]:
    """The caller, or (admins only) the subject named; a named subject's tenant defaults to the target's."""
    own = caller_subject(caller)
    if not caller.is_admin:
        if request.candidate is not None:
            raise PermissionDenied(ADMINS_ONLY.format(what="with a candidate policy"), field="policy")
        if request.subject is not None and dict(request.subject) != own:
            raise PermissionDenied(ADMINS_ONLY.format(what="as another subject"), field="subject")
        return own
    if request.subject is None:
        return own
    return checked_subject(request.subject, tenant)


def _roles_first(subject: Mapping[str, Any], probed: Probed) -> Probed:
    """Roles before policies, as the services enforce them: an admin subject is not governed, a viewer never
    writes. (The probes apply this too; applying it here keeps the answer right whatever they send.)"""
    writes = subject_writes(subject)
    if not subject_governed(subject):
        entries = [Entry(e.record, True, update=writes, delete=writes, write=writes) for e in probed.entries]
        return Probed(False, entries, probed.truncated)
    if writes:
        return probed
    entries = [replace(e, update=False, delete=False, write=False) for e in probed.entries]
    return Probed(probed.governed, entries, probed.truncated)


def _readable(result: LiveResult, limit: int) -> LiveResult:
    """What a developer or viewer may see: the rows or objects it may read, the first `limit` of them."""
    readable = [entry for entry in result.entries if entry.read]
    truncated = len(readable) > limit or result.truncated
    return replace(result, entries=readable[:limit], truncated=truncated)


def _topic(documents: list[dict[str, Any]], subject: Mapping[str, Any], topic: str) -> LiveResult:
    access = topic_access(compile_set(documents), subject, topic)
    entry = Entry(topic_record(topic), access.read, write=access.write)
    return LiveResult(topic_resource(topic), access.governed, [entry], False)


def _audit_target(kind: str, name: str) -> None:
    resource = {"table": name, "bucket": f"storage:{name}", "topic": topic_resource(name)}[kind]
    current_call().audit.update(target=resource[:160], live=True)


def _audit_subject(tenant: str, subject: Mapping[str, Any], candidate: Mapping[str, Any] | None) -> None:
    """Whom the dry run was about: the subject's sub and roles, and the candidate policy's name."""
    roles = subject.get("roles")
    audit = current_call().audit
    audit.update(policy_tenant=tenant, subject=str(subject.get("sub", ""))[:128])
    if isinstance(roles, list):
        audit["subject_roles"] = ",".join(str(role) for role in roles)[:128]
    if candidate is not None:
        audit["candidate"] = str(candidate.get("name", ""))[:128]
