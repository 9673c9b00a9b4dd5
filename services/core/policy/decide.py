"""The Python rendering of a policy: the decision the dry run shows and storage and realtime enforce.

A rule applies to a request when it covers the action, names the resource and every condition holds. Deny
overrides allow; when no rule applies the answer is deny (rule index -1). Every decision carries a human
reason, and a condition that cannot be evaluated (a missing or null field, `gt` between a string and a
number) is "not matched, because ...", never a crash. sql.py renders the same IR as SQL; the equivalence
tests hold the two to the same answers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.context import Principal
from services.core.errors import InvalidArgument
from services.core.policy.lang import (
    SUBJECT_REF,
    Condition,
    Policy,
    Rule,
    is_number,
    is_ref,
    kind_of,
    parse_policy,
    ref_path,
)

MAX_RECORDS = 1000
# A dry run evaluates at most this many (record, rule or condition) steps, so one request cannot hold a
# worker for long whatever the policy set and records it brings.
MAX_STEPS = 100_000
MAX_LISTED = 10  # rules named in one reason; the rest are counted


class _Missing:
    """A path that leads nowhere: distinct from JSON null."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str  # "allow" or "deny"
    rule_index: int  # -1: default deny
    reason: str
    policy: str = ""  # the deciding rule's policy (empty for a default deny)


@dataclass(frozen=True, slots=True)
class Scoped:
    """A rule with the label reasons use: "rule 2" in a one-policy dry run, "own-rows rule 2" in a set."""

    policy: str
    index: int
    rule: Rule
    label: str


@dataclass(frozen=True, slots=True)
class PolicySet:
    """A tenant's stored policies, combined: every rule of every policy counts, and a deny wins."""

    policies: tuple[Policy, ...] = ()
    revision: int = 0
    scoped: tuple[Scoped, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = (lambda p, i: f"rule {i}") if len(self.policies) == 1 else (lambda p, i: f"{p} rule {i}")
        rules = tuple(
            Scoped(policy.name, i, rule, label(policy.name, i))
            for policy in self.policies
            for i, rule in enumerate(policy.rules)
        )
        object.__setattr__(self, "scoped", rules)

    def governs(self, resource: str, kind: str | None = None) -> bool:
        """A table is governed by a rule naming it; storage and realtime by any rule of their kind. `kind`:
        what the resource is when its name alone cannot say (a table may be called "storage:x")."""
        kind = kind or kind_of(resource)
        if kind == "table":
            return any(s.rule.names(resource, kind) for s in self.scoped)
        return any(kind_of(s.rule.resource) == kind for s in self.scoped)

    def rules_for(self, action: str, resource: str, kind: str | None = None) -> list[Scoped]:
        return [s for s in self.scoped if s.rule.covers(action) and s.rule.names(resource, kind)]

    def decide(
        self, action: str, resource: str, record: Mapping[str, Any], subject: Mapping[str, Any]
    ) -> Decision:
        return _decide(self.scoped, record, action, resource, subject)

    def allows(
        self, action: str, resource: str, record: Mapping[str, Any], subject: Mapping[str, Any]
    ) -> bool:
        return self.decide(action, resource, record, subject).decision == "allow"


def compile_set(documents: Sequence[Mapping[str, Any]], revision: int = 0) -> PolicySet:
    return PolicySet(tuple(parse_policy(document) for document in documents), revision)


def subject_of(principal: Principal) -> dict[str, Any]:
    """What `subject.<field>` and `$subject.<field>` mean for a verified caller."""
    return {"sub": principal.subject, "tenant": principal.tenant, "roles": list(principal.roles)}


def governed(principal: Principal) -> bool:
    """Tenant admins are never governed by policies (like Supabase's service role)."""
    return not principal.is_admin


# ------------------------------------------------------------------------------------------- evaluation


def dry_run(
    policy: Policy,
    records: Sequence[Mapping[str, Any]],
    action: str,
    resource: str,
    subject: Mapping[str, Any],
) -> list[Decision]:
    """One decision per record, in order."""
    if not action:
        raise InvalidArgument("action is required", field="action")
    if not resource:
        raise InvalidArgument("resource is required", field="resource")
    if len(records) > MAX_RECORDS:
        raise InvalidArgument(f"at most {MAX_RECORDS} records per dry run", field="records")
    steps = len(records) * sum(1 + len(rule.conditions) for rule in policy.rules)
    if steps > MAX_STEPS:
        raise InvalidArgument(
            f"dry run too large: {len(records)} records x {len(policy.rules)} rules and their conditions "
            f"is {steps} steps; at most {MAX_STEPS}",
            field="records",
        )
    rules = PolicySet((policy,)).scoped
    return [_decide(rules, record, action, resource, subject) for record in records]


def evaluate(
    policy: Policy, record: Mapping[str, Any], action: str, resource: str, subject: Mapping[str, Any]
) -> Decision:
    return _decide(PolicySet((policy,)).scoped, record, action, resource, subject)


def _decide(
    rules: Sequence[Scoped],
    record: Mapping[str, Any],
    action: str,
    resource: str,
    subject: Mapping[str, Any],
) -> Decision:
    """Deny overrides allow; no applicable rule denies.

    The reason of an allow also names the deny rules that were in scope but whose conditions failed, so a
    dry run shows why they did not apply (a type mismatch, a missing field).
    """
    scopes = {"record": record, "subject": subject}
    allow: Scoped | None = None
    allow_why = ""
    misses: list[str] = []
    unmet_denies: list[str] = []
    for scoped in rules:
        outcome, why = _rule_applies(scoped.rule, action, resource, scopes)
        if outcome != _MATCHED:
            misses.append(f"{scoped.label} ({scoped.rule.effect}) {outcome}: {why}")
            if outcome == _UNMET and scoped.rule.effect == "deny":
                unmet_denies.append(misses[-1])
        elif scoped.rule.effect == "deny":
            overrides = f"; overrides allow from {allow.label}" if allow else ""
            reason = f"{scoped.label} (deny) matched: {why}{overrides}"
            return Decision("deny", scoped.index, reason, scoped.policy)
        elif allow is None:
            allow, allow_why = scoped, f"{scoped.label} (allow) matched: {why}"
    if allow is not None:
        return Decision("allow", allow.index, "; ".join([allow_why, *_listed(unmet_denies)]), allow.policy)
    return Decision("deny", -1, "no rule matched (default deny): " + "; ".join(_listed(misses)))


def _listed(reasons: list[str]) -> list[str]:
    """At most MAX_LISTED reasons, then a count of the rest: a reason stays readable with many rules."""
    if len(reasons) <= MAX_LISTED:
        return reasons
    return [*reasons[:MAX_LISTED], f"{len(reasons) - MAX_LISTED} more rules did not apply"]


_MATCHED, _SKIPPED, _UNMET = "matched", "skipped", "not matched"


def _rule_applies(
    rule: Rule, action: str, resource: str, scopes: Mapping[str, Mapping[str, Any]]
) -> tuple[str, str]:
    """(outcome, why): skipped (action or resource out of scope), not matched (a condition), or matched."""
    if not rule.covers(action):
        return _SKIPPED, f"action {action!r} not in {list(rule.actions)}"
    if not rule.names(resource):
        return _SKIPPED, f"resource {resource!r} does not match {rule.resource!r}"
    held: list[str] = []
    for condition in rule.conditions:
        ok, why = check(condition, scopes)
        if not ok:
            return _UNMET, why
        held.append(why)
    return _MATCHED, " and ".join(held) if held else f"action {action!r} on {resource!r}, no conditions"


def check(condition: Condition, scopes: Mapping[str, Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether one condition holds, and the text that says so (or why not)."""
    text = f"{condition.key} {condition.op} {_show_operand(condition.operand)}"
    value = lookup(scopes[condition.scope], condition.path)
    if condition.op == "exists":
        return _exists(text, condition.key, value, condition.operand)
    operand = _resolve(condition.operand, scopes["subject"])
    if isinstance(operand, _Unresolved):
        return False, f"{text}: {operand.ref} is {operand.why}"
    if value is MISSING or value is None:
        return False, f"{text}: {condition.key} is {'missing' if value is MISSING else 'null'}"
    verdict = _OPS[condition.op](value, operand)
    if isinstance(verdict, str):
        return False, f"{text}: {verdict}"
    if verdict:
        return True, text
    return False, f"{text} is false ({condition.key} is {_show(value)})"


def _exists(text: str, key: str, value: Any, wanted: bool) -> tuple[bool, str]:
    present = value is not MISSING and value is not None
    if present == wanted:
        return True, text
    return False, f"{text} is false ({key} is {'present' if present else 'missing or null'})"


def lookup(root: Any, path: Iterable[str]) -> Any:
    """Follows a dotted path through objects (and lists, by numeric index); MISSING when it breaks."""
    current = root
    for part in path:
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isascii() and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


@dataclass(frozen=True, slots=True)
class _Unresolved:
    ref: str
    why: str  # "missing" or "null"


def _resolve(operand: Any, subject: Mapping[str, Any]) -> Any:
    """Subject references replaced by their values; a missing or null reference satisfies nothing."""
    if is_ref(operand):
        value = lookup(subject, ref_path(operand))
        if value is MISSING or value is None:
            return _Unresolved(operand, "missing" if value is MISSING else "null")
        return value
    if isinstance(operand, list):
        resolved = [_resolve(item, subject) for item in operand]
        return next((item for item in resolved if isinstance(item, _Unresolved)), resolved)
    return operand


# ------------------------------------------------------------------------------------ operators and types
# Each operator returns True/False, or a string saying why the values cannot be compared.


def kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and "1" != 1; lists and objects compare deeply."""
    if kind(a) != kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _order(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool | str]:
    def op(value: Any, operand: Any) -> bool | str:
        kinds = (kind(value), kind(operand))
        if kinds in (("number", "number"), ("string", "string")):
            return compare(value, operand)
        return f"cannot compare {kinds[0]} {_show(value)} with {kinds[1]} {_show(operand)}"

    return op


def _in(value: Any, operand: Any) -> bool | str:
    if not isinstance(operand, list):
        return f"in needs a list, got {kind(operand)} {_show(operand)}"
    return any(same(value, item) for item in operand)


def _contains(value: Any, operand: Any) -> bool | str:
    if isinstance(value, list):
        return any(same(item, operand) for item in value)
    if isinstance(value, str) and isinstance(operand, str):
        return operand in value
    return f"contains needs a list, or a string and a string; got {kind(value)} and {kind(operand)}"


_OPS: dict[str, Callable[[Any, Any], bool | str]] = {
    "eq": same,
    "ne": lambda value, operand: not same(value, operand),
    "in": _in,
    "gt": _order(lambda a, b: a > b),
    "gte": _order(lambda a, b: a >= b),
    "lt": _order(lambda a, b: a < b),
    "lte": _order(lambda a, b: a <= b),
    "contains": _contains,
}


def _show(value: Any) -> str:
    return "missing" if value is MISSING else json.dumps(value, ensure_ascii=False, default=str)[:200]


def _show_operand(operand: Any) -> str:
    """A reference as written ($subject.sub); a literal as JSON."""
    return operand if isinstance(operand, str) and operand.startswith(SUBJECT_REF) else _show(operand)
