"""What a subject may do, given its roles and a policy set: the parts enforcement and the live dry run share.

Enforcement starts from a verified Principal (services.core.policy.governed, Principal.can_write); the live
dry run (services/auth) starts from a subject document `{sub, tenant, roles}`, which is what subject_of()
makes of a principal. These functions read the subject the way enforcement reads the principal, so the dry
run of a subject answers what that subject is served:

- roles first: only admins and developers write (viewers never do, whatever a policy says);
- tenant admins are never governed;
- realtime: resource `realtime:<topic>`, record `{topic}`; any `realtime:` rule governs every topic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.core.context import WRITE_ROLES
from services.core.errors import InvalidArgument
from services.core.policy.decide import PolicySet

# Topic names, for the realtime service and the live dry run alike: letters, digits and . _ : -.
TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


SUBJECT_FIELDS = ("sub", "tenant", "roles")


def checked_subject(raw: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """A subject named for a live dry run, as a real call of that user carries it (subject_of: sub, tenant,
    roles), so the dry run decides nothing enforcement never would. InvalidArgument naming the field."""
    unknown = sorted(set(raw) - set(SUBJECT_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"subject.{unknown[0]}: a live dry run takes what a real call carries: sub, tenant, roles",
            field=f"subject.{unknown[0]}",
        )
    sub, roles = raw.get("sub"), raw.get("roles", [])
    if not isinstance(sub, str) or not sub:
        raise InvalidArgument("subject.sub: name the user to dry-run as (its sub)", field="subject.sub")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise InvalidArgument(
            'subject.roles: a list of role names, e.g. ["developer"]', field="subject.roles"
        )
    if raw.get("tenant", tenant) != tenant:
        raise InvalidArgument(
            f"subject.tenant: the subject must be of tenant {tenant!r}, the dry run's", field="subject.tenant"
        )
    return {"sub": sub, "tenant": tenant, "roles": list(roles)}


def roles_of(subject: Mapping[str, Any]) -> tuple[str, ...]:
    """The subject's roles; anything but a list of strings counts as no roles (no writes, governed)."""
    roles = subject.get("roles")
    if not isinstance(roles, list):
        return ()
    return tuple(role for role in roles if isinstance(role, str))


def subject_governed(subject: Mapping[str, Any]) -> bool:
    """services.core.policy.governed for a subject: tenant admins are never governed."""
    return "admin" not in roles_of(subject)


def subject_writes(subject: Mapping[str, Any]) -> bool:
    """Principal.can_write for a subject: roles come before any policy."""
    return any(role in WRITE_ROLES for role in roles_of(subject))


def check_topic(name: str, field: str = "topic") -> str:
    if not TOPIC.match(name):
        raise InvalidArgument(
            f"topic {name[:64]!r} is not valid: letters, digits and . _ : -, at most 128 characters",
            field=field,
        )
    return name


def topic_resource(topic: str) -> str:
    return f"realtime:{topic}"


def topic_record(topic: str) -> dict[str, Any]:
    return {"topic": topic}


@dataclass(frozen=True, slots=True)
class TopicAccess:
    governed: bool  # the policies apply to this subject on this topic
    read: bool  # subscribe (and replay)
    write: bool  # publish


def topic_access(policies: PolicySet, subject: Mapping[str, Any], topic: str) -> TopicAccess:
    """What the realtime service decides for this subject on `topic` (services/realtime/access.py: admit)."""
    resource = topic_resource(topic)
    writes = subject_writes(subject)
    if not subject_governed(subject) or not policies.governs(resource):
        return TopicAccess(False, True, writes)
    record = topic_record(topic)
    read = policies.allows("read", resource, record, subject)
    write = writes and policies.allows("write", resource, record, subject)
    return TopicAccess(True, read, write)
