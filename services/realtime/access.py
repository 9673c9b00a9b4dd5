"""Realtime topics obey the tenant's policies: resource `realtime:<topic>`, record `{topic}`; `read` is
subscribe (with its replay), `write` is publish.

- Decided at join (a subscribe and the replay it asks for) and on every publish: for Connect streams, the
  unary Publish and each socket behind an edge's relay (the edge sends that socket's principal with its
  subscribe; the edge itself decides nothing).
- Any `realtime:` rule governs all of the tenant's topics. On a governed tenant, for developers and
  viewers, what no rule allows is denied and a matching deny wins. Tenant admins are never governed (their
  calls do not even read the policies). Roles apply first: the servicer refuses a viewer's publish before
  any policy is read. An ungoverned tenant behaves as if policies did not exist.
- A policy change applies to the next subscribe and publish (the book is read per call), and ends the open
  subscriptions that lost access within RECHECK_S plus one sweep: every RECHECK_S, the sweep reads the policy
  set of each tenant with subscribers here (one cheap revision read each, never on the hub's paths) and
  re-decides only when that revision is not the one its readers were admitted at. A reader that lost access
  gets a PERMISSION_DENIED error frame for that topic; its stream (or socket) goes on with its other topics.
- Fail closed: a subscribe or publish whose policies cannot be read fails (the book's error). A sweep that
  cannot read them keeps the subscriptions as they are and tries again next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from services.core.context import Principal
from services.core.errors import PermissionDenied
from services.core.policy import PolicySet, governed, subject_of
from services.core.policy.access import topic_record, topic_resource
from services.realtime.hub import Hub, Reader

log = logging.getLogger("launchpad.realtime")

RECHECK_S = 2.0  # how often open subscriptions are re-checked (when their tenant's policies changed)
READS_AT_ONCE = 8  # policy reads one sweep runs concurrently
DECISIONS_PER_YIELD = 500  # re-decisions between two yields to the event loop: the hub never stalls

_DOING = {"read": "subscribing to", "write": "publishing to"}


class PolicySource(Protocol):
    """services.core.policy.book.PolicyBook, or a stand-in."""

    async def current(self, tenant: str) -> PolicySet: ...


def refusal(policies: PolicySet, principal: Principal, action: str, topic: str) -> str | None:
    """None when `principal` may `action` the topic under `policies`; else the outcome, in words."""
    resource = topic_resource(topic)
    if not policies.governs(resource):
        return None
    decision = policies.decide(action, resource, topic_record(topic), subject_of(principal))
    if decision.decision == "allow":
        return None
    return f"policy denies {action} on {resource}: {decision.reason}"


class Access:
    """Admission of subscribes and publishes, and the periodic re-check of open subscriptions."""

    def __init__(self, book: PolicySource, hub: Hub, period_s: float | None = None) -> None:
        self._book, self._hub = book, hub
        self.period_s = RECHECK_S if period_s is None else period_s
        self._checked: dict[str, int] = {}  # tenant -> the revision its readers were last re-decided at
        self._dirty: set[str] = set()  # tenants with readers admitted at another revision since then
        self._task: asyncio.Task[None] | None = None

    async def admit(self, principal: Principal, action: str, topic: str) -> Reader:
        """The reader for a subscribe ("read") or the go-ahead for a publish ("write"); PermissionDenied
        naming the outcome when the tenant's policies refuse it."""
        if not governed(principal):
            return Reader(principal, None)
        policies = await self._book.current(principal.tenant)
        refused = refusal(policies, principal, action, topic)
        if refused is not None:
            raise PermissionDenied(f"{_DOING[action]} {topic!r} is refused: {refused}")
        return Reader(principal, policies.revision)

    def watch(self, tenant: str, reader: Reader) -> None:
        """Call as the reader becomes visible in the hub (same step, no await between): a reader admitted at
        another revision than the last sweep's makes the next sweep re-decide the tenant."""
        if reader.revision is not None and reader.revision != self._checked.get(tenant):
            self._dirty.add(tenant)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("realtime: the policy re-check failed; trying again next period")

    async def sweep(self) -> int:
        """Re-decides the readers of every tenant whose policy revision moved; returns how many it ended."""
        tenants = list(self._hub.by_tenant())
        for gone in set(self._checked) - set(tenants):
            del self._checked[gone]  # nobody subscribed here any more: forget it
        policies = await self._read_all(tenants)
        changed: dict[str, PolicySet] = {}
        for tenant, current in policies.items():
            if current.revision != self._checked.get(tenant) or tenant in self._dirty:
                self._checked[tenant] = current.revision
                self._dirty.discard(tenant)  # readers admitted from here on mark it again if need be
                changed[tenant] = current
        if not changed:
            return 0
        ended = decided = 0
        for tenant, subs in self._hub.by_tenant().items():  # fresh: includes whoever joined meanwhile
            current = changed.get(tenant)
            if current is None:
                continue
            for sub in subs:
                for key, reader in list(sub.readers.items()):
                    if reader.revision is None or reader.revision == current.revision:
                        continue
                    decided += 1
                    refused = refusal(current, reader.principal, "read", sub.topic)
                    if refused is None:
                        reader.revision = current.revision
                        continue
                    ended += 1
                    failure = PermissionDenied(f"subscription to {sub.topic!r} ended: {refused}")
                    if sub.revoke(key, failure):
                        self._hub.detach(sub)
                if decided >= DECISIONS_PER_YIELD:
                    decided = 0
                    await asyncio.sleep(0)  # joiners meanwhile were admitted at `current` or mark dirty
        if ended:
            log.info("realtime: a policy change ended %d subscriptions", ended)
        return ended

    async def _read_all(self, tenants: list[str]) -> dict[str, PolicySet]:
        """Each tenant's current policy set; a tenant whose read fails is left out (kept as it is)."""
        gate = asyncio.Semaphore(READS_AT_ONCE)

        async def read(tenant: str) -> PolicySet:
            async with gate:
                return await self._book.current(tenant)

        results = await asyncio.gather(*(read(t) for t in tenants), return_exceptions=True)
        policies: dict[str, PolicySet] = {}
        for tenant, result in zip(tenants, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("realtime: cannot read the policies of %s to re-check: %s", tenant, result)
            else:
                policies[tenant] = result
        return policies
