"""Storage objects obey the tenant's policies: which objects a caller may read (list, download URL) and write
(upload URL, delete), decided by the same PolicySet the dry run shows.

An object is the resource `storage:<bucket>/<key>` and its record is `{bucket, key, size, content_type,
owner}`, where `owner` is the `sub` that signed its upload (absent when the upload recorded none, so only
`exists: false` matches it). A rule naming any `storage:` resource governs all of the tenant's storage; on
governed storage what no rule allows is denied and a matching deny wins. Tenant admins are never governed,
and roles still come first (a viewer never uploads, whatever a policy says). Ungoverned storage answers by
roles alone.

The policies are read from the policy book on every call (one revision lookup), so a change applies to the
very next call. A refusal is PERMISSION_DENIED naming the outcome (the deciding deny rule, or "no rule allows
it"), never a value from an object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from services.core.context import Principal
from services.core.errors import PermissionDenied
from services.core.objects import ObjectInfo
from services.core.policy import Decision, PolicySet, governed, kind_of, subject_of
from services.core.policy.access import subject_governed

READ, WRITE = "read", "write"
# What every listing knows; anything else a rule reads (owner, content_type, unknown fields) needs the object's
# details, which an S3 listing lacks (see ObjectStore.details).
LISTED_FIELDS = frozenset({"bucket", "key", "size"})


class PolicySource(Protocol):
    """services.core.policy.book.PolicyBook, or a stand-in in tests."""

    async def current(self, tenant: str) -> PolicySet: ...


def resource_of(bucket: str, key: str) -> str:
    return f"storage:{bucket}/{key}"


def key_record(bucket: str, key: str) -> dict[str, Any]:
    """What is known of an object that does not exist (yet): its bucket and key."""
    return {"bucket": bucket, "key": key}


def object_record(bucket: str, info: ObjectInfo) -> dict[str, Any]:
    """The record of a stored object; fields the store does not know are left out (missing, not null)."""
    record: dict[str, Any] = {"bucket": bucket, "key": info.key, "size": info.size}
    if info.detailed:
        record["content_type"] = info.content_type
        if info.owner is not None:
            record["owner"] = info.owner
    return record


def upload_record(bucket: str, key: str, content_type: str, owner: str) -> dict[str, Any]:
    """The record an upload would store: the size is unknown when the URL is signed, so it is missing."""
    return {"bucket": bucket, "key": key, "content_type": content_type, "owner": owner}


def outcome(decision: Decision) -> str:
    """The policy outcome of a refusal, from the decision's structure only: its reason text also quotes the
    record's values (whose owner it is), which a caller refused that object must not learn."""
    if decision.rule_index < 0:
        return "no rule allows it (default deny on governed storage)"
    of = f" of policy {decision.policy!r}" if decision.policy else ""
    return f"deny rule {decision.rule_index}{of} matched"


@dataclass(frozen=True, slots=True)
class Gate:
    """How the tenant's policies apply to one caller in one bucket. `policies` None: not governed (a tenant
    admin, or no storage rule at all), every call behaves as it did before policies existed."""

    bucket: str
    policies: PolicySet | None = None
    subject: Mapping[str, Any] | None = None

    @property
    def governed(self) -> bool:
        return self.policies is not None

    @property
    def needs_details(self) -> bool:
        """Whether some storage rule reads a field a bare listing lacks (owner, content_type, ...)."""
        if self.policies is None:
            return False
        return any(
            condition.scope == "record" and condition.path[0] not in LISTED_FIELDS
            for scoped in self.policies.scoped
            if kind_of(scoped.rule.resource) == "storage"
            for condition in scoped.rule.conditions
        )

    def decide(self, action: str, key: str, record: Mapping[str, Any]) -> Decision:
        assert self.policies is not None and self.subject is not None
        return self.policies.decide(action, resource_of(self.bucket, key), record, self.subject)

    def allows(self, action: str, info: ObjectInfo) -> bool:
        """For listings and prefix deletes: ungoverned allows everything."""
        if self.policies is None:
            return True
        return self.decide(action, info.key, object_record(self.bucket, info)).decision == "allow"

    def require(self, action: str, key: str, existing: ObjectInfo | None) -> None:
        """PermissionDenied unless `action` is allowed on the object at `key` (decided on its record, or on
        {bucket, key} when there is none).

        The refusal must not tell whether a refused object exists: when the bare {bucket, key} is refused as
        well, that is the outcome reported, so a missing object and a hidden one read the same. The caller's
        own upload (its sub is the owner) is no secret to it: then the real outcome is reported.
        """
        if self.policies is None:
            return
        bare = key_record(self.bucket, key)
        decision = self.decide(action, key, object_record(self.bucket, existing) if existing else bare)
        if decision.decision == "allow":
            return
        if existing is not None and existing.owner != (self.subject or {}).get("sub"):
            without = self.decide(action, key, bare)
            decision = without if without.decision == "deny" else decision
        raise PermissionDenied(
            f"storage policy denies {action} on {resource_of(self.bucket, key)}: {outcome(decision)}",
            policy=decision.policy,
            rule=decision.rule_index,
        )

    def require_upload(self, key: str, record: Mapping[str, Any], existing: ObjectInfo | None) -> None:
        """An upload is a write of the record it would store (WITH CHECK) and, when an object is already
        there, a write of that object too (USING): the caller must be allowed both."""
        if self.policies is None:
            return
        decision = self.decide(WRITE, key, record)
        if decision.decision == "deny":
            raise PermissionDenied(
                f"storage policy denies uploading {resource_of(self.bucket, key)}: {outcome(decision)}",
                policy=decision.policy,
                rule=decision.rule_index,
            )
        if existing is None:
            return
        decision = self.decide(WRITE, key, object_record(self.bucket, existing))
        if decision.decision == "deny":
            raise PermissionDenied(
                f"storage policy denies uploading over the object stored at {resource_of(self.bucket, key)}: "
                f"{outcome(decision)}",
                policy=decision.policy,
                rule=decision.rule_index,
            )


async def gate_for(book: PolicySource, principal: Principal, bucket: str) -> Gate:
    """The caller's gate for `bucket`, from the tenant's policies as stored now (no cache beyond the book's
    revision check). A book that cannot be read raises: storage fails closed, never open."""
    if not governed(principal):
        return Gate(bucket)  # admins: not even a read of the book
    return gate_with(await book.current(principal.tenant), subject_of(principal), bucket)


def gate_with(policies: PolicySet, subject: Mapping[str, Any], bucket: str) -> Gate:
    """The gate of `subject` (subject_of a principal, or the live dry run's subject) under `policies`."""
    if not subject_governed(subject) or not policies.governs(resource_of(bucket, "")):
        return Gate(bucket)
    return Gate(bucket, policies, subject)
