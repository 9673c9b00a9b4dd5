"""The policy language: parsing (with errors that name the offending rule) and a pure evaluator.

A policy is `{name, rules: [{effect, actions, resource, condition}]}`. A rule applies to a request when its
action and resource match and every condition holds. Deny overrides allow; when no rule applies the answer is
deny (rule index -1). Every decision carries a human reason, and a condition that cannot be evaluated (a
missing field, `gt` between a string and a number) is "not matched, because ...", never a crash.

Values follow JSON: numbers (int or float, never bool), strings, booleans, null, lists, objects. Conditions
are checked in key order (JSON objects and protobuf Structs carry no order; all must hold anyway, the order
only shapes the reason text). Nothing here imports grpc; the servicer converts Structs into plain dicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.core.errors import InvalidArgument

EFFECTS = ("allow", "deny")
OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists")
SUBJECT_REF = "$subject."
MAX_RULES = 200
MAX_CONDITIONS = 32
MAX_RECORDS = 1000
# A dry run evaluates at most this many (record, rule or condition) steps: about 0.3 s of CPU.
MAX_STEPS = 100_000
MAX_LISTED = 10  # rules named in one reason; the rest are counted
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_RULE_FIELDS = frozenset({"effect", "actions", "resource", "condition"})


class _Missing:
    """A path that leads nowhere: distinct from JSON null."""

    def __repr__(self) -> str:
        return "missing"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Condition:
    key: str  # "record.owner", as written
    scope: str  # "record" or "subject"
    path: tuple[str, ...]
    op: str
    operand: Any  # a literal or a "$subject.<field>" reference


@dataclass(frozen=True, slots=True)
class Rule:
    effect: str
    actions: tuple[str, ...]
    resource: str
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    decision: str  # "allow" or "deny"
    rule_index: int  # -1: default deny
    reason: str


# ---------------------------------------------------------------------------------------------- parsing


def parse_policy(raw: Any) -> Policy:
    """Validates a policy document; InvalidArgument names the first offending field."""
    if not isinstance(raw, Mapping):
        raise InvalidArgument("policy must be an object", field="policy")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(
            "policy.name must be 1-128 characters: letters, digits, '_', '.', ':' or '-'", field="name"
        )
    rules = raw.get("rules")
    if not isinstance(rules, list) or not rules:
        raise InvalidArgument("policy.rules must be a non-empty list", field="rules")
    if len(rules) > MAX_RULES:
        raise InvalidArgument(f"policy.rules has {len(rules)} rules; at most {MAX_RULES}", field="rules")
    return Policy(name, tuple(_parse_rule(i, rule) for i, rule in enumerate(rules)))


def _fail(where: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{where} {message}", field=where)


def _parse_rule(index: int, raw: Any) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be an object")
    unknown = sorted(set(raw) - _RULE_FIELDS)
    if unknown:
        raise _fail(
            where, f"has unknown field {unknown[0]!r} (expected effect, actions, resource, condition)"
        )
    effect = raw.get("effect")
    if effect not in EFFECTS:
        raise _fail(f"{where}.effect", "must be allow or deny")
    actions = raw.get("actions")
    if not isinstance(actions, list) or not actions or not all(_is_pattern(a) for a in actions):
        raise _fail(f"{where}.actions", "must be a non-empty list of non-empty strings ('*' may end one)")
    resource = raw.get("resource")
    if not _is_pattern(resource):
        raise _fail(f"{where}.resource", "must be a non-empty string; '*' may appear only at the end")
    return Rule(effect, tuple(actions), resource, _parse_conditions(where, raw.get("condition")))


def _is_pattern(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "*" not in value[:-1]


def _parse_conditions(where: str, raw: Any) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    where = f"{where}.condition"
    if not isinstance(raw, Mapping):
        raise _fail(where, "must be an object")
    if len(raw) > MAX_CONDITIONS:
        raise _fail(where, f"has {len(raw)} keys; at most {MAX_CONDITIONS}")
    conditions: list[Condition] = []
    for key in sorted(raw, key=str):  # a deterministic order: JSON objects and Structs carry none
        spec = raw[key]
        scope, path = _parse_key(where, key)
        for op, operand in _operators(f"{where}[{key!r}]", spec):
            conditions.append(Condition(key, scope, path, op, operand))
    return tuple(conditions)


def _parse_key(where: str, key: Any) -> tuple[str, tuple[str, ...]]:
    scope, _, rest = str(key).partition(".")
    path = tuple(rest.split(".")) if rest else ()
    if scope not in ("record", "subject") or not path or not all(path):
        raise _fail(where, f"key {key!r} must be 'record.<field>' or 'subject.<field>'")
    return scope, path


def _operators(where: str, spec: Any) -> list[tuple[str, Any]]:
    """A bare value means eq; an object is one or more operators, all of which must hold."""
    if not isinstance(spec, Mapping):
        _check_operand(where, "eq", spec)
        return [("eq", spec)]
    if not spec:
        raise _fail(where, f"must name an operator: one of {', '.join(OPERATORS)}")
    for op, operand in spec.items():
        if op not in OPERATORS:
            raise _fail(where, f"has unknown operator {op!r}; use one of {', '.join(OPERATORS)}")
        _check_operand(f"{where}.{op}", op, operand)
    return sorted(spec.items(), key=lambda item: str(item[0]))


def _check_operand(where: str, op: str, operand: Any) -> None:
    if _is_ref(operand):
        _ref_path(where, operand)
        return
    if op == "exists" and not isinstance(operand, bool):
        raise _fail(where, "operand must be true or false")
    if op == "in" and not isinstance(operand, list):
        raise _fail(where, "operand must be a list or a $subject reference")
    if op in ("gt", "gte", "lt", "lte") and not (_is_number(operand) or isinstance(operand, str)):
        raise _fail(where, "operand must be a number or a string")
    for item in operand if isinstance(operand, list) else ():
        if _is_ref(item):
            _ref_path(where, item)


def _is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SUBJECT_REF)


def _ref_path(where: str, ref: str) -> tuple[str, ...]:
    path = tuple(ref[len(SUBJECT_REF) :].split("."))
    if not all(path):
        raise _fail(where, f"reference {ref!r} must be '$subject.<field>'")
    return path


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
    return [evaluate(policy, record, action, resource, subject) for record in records]


def evaluate(
    policy: Policy, record: Mapping[str, Any], action: str, resource: str, subject: Mapping[str, Any]
) -> Decision:
    """Deny overrides allow; no applicable rule denies.

    The reason of an allow also names the deny rules that were in scope but whose conditions failed, so a
    dry run shows why they did not apply (a type mismatch, a missing field).
    """
    scopes = {"record": record, "subject": subject}
    allow: tuple[int, str] | None = None
    misses: list[str] = []
    unmet_denies: list[str] = []
    for index, rule in enumerate(policy.rules):
        outcome, why = _rule_applies(rule, action, resource, scopes)
        if outcome != _MATCHED:
            misses.append(f"rule {index} ({rule.effect}) {outcome}: {why}")
            if outcome == _UNMET and rule.effect == "deny":
                unmet_denies.append(misses[-1])
        elif rule.effect == "deny":
            overrides = f"; overrides allow from rule {allow[0]}" if allow else ""
            return Decision("deny", index, f"rule {index} (deny) matched: {why}{overrides}")
        elif allow is None:
            allow = (index, f"rule {index} (allow) matched: {why}")
    if allow is not None:
        return Decision("allow", allow[0], "; ".join([allow[1], *_listed(unmet_denies)]))
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
    if not any(_glob(pattern, action) for pattern in rule.actions):
        return _SKIPPED, f"action {action!r} not in {list(rule.actions)}"
    if not _glob(rule.resource, resource):
        return _SKIPPED, f"resource {resource!r} does not match {rule.resource!r}"
    held: list[str] = []
    for condition in rule.conditions:
        ok, why = _check(condition, scopes)
        if not ok:
            return _UNMET, why
        held.append(why)
    return _MATCHED, " and ".join(held) if held else f"action {action!r} on {resource!r}, no conditions"


def _glob(pattern: str, value: str) -> bool:
    """Exact match, or a prefix match when the pattern ends in '*' ('*' alone matches everything)."""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _check(condition: Condition, scopes: Mapping[str, Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether one condition holds, and the text that says so (or why not)."""
    text = f"{condition.key} {condition.op} {_show_operand(condition.operand)}"
    value = lookup(scopes[condition.scope], condition.path)
    operand = _resolve(condition.operand, scopes["subject"])
    if isinstance(operand, _Unresolved):
        return False, f"{text}: {operand.ref} is missing"
    if condition.op == "exists":
        return _exists(text, condition.key, value, operand)
    if value is MISSING:
        return False, f"{text}: {condition.key} is missing"
    verdict = _OPS[condition.op](value, operand)
    if isinstance(verdict, str):
        return False, f"{text}: {verdict}"
    if verdict:
        return True, text
    return False, f"{text} is false ({condition.key} is {_show(value)})"


def _exists(text: str, key: str, value: Any, wanted: Any) -> tuple[bool, str]:
    if not isinstance(wanted, bool):
        return False, f"{text}: exists needs true or false, got {_show(wanted)}"
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
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


@dataclass(frozen=True, slots=True)
class _Unresolved:
    ref: str


def _resolve(operand: Any, subject: Mapping[str, Any]) -> Any:
    if _is_ref(operand):
        value = lookup(subject, operand[len(SUBJECT_REF) :].split("."))
        return _Unresolved(operand) if value is MISSING else value
    if isinstance(operand, list):
        resolved = [_resolve(item, subject) for item in operand]
        return next((item for item in resolved if isinstance(item, _Unresolved)), resolved)
    return operand


# ------------------------------------------------------------------------------------ operators and types
# Each operator returns True/False, or a string saying why the values cannot be compared.


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, Mapping) else type(value).__name__


def same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and "1" != 1; lists and objects compare deeply."""
    if _kind(a) != _kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _order(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool | str]:
    def op(value: Any, operand: Any) -> bool | str:
        kinds = (_kind(value), _kind(operand))
        if kinds in (("number", "number"), ("string", "string")):
            return compare(value, operand)
        return f"cannot compare {kinds[0]} {_show(value)} with {kinds[1]} {_show(operand)}"

    return op


def _in(value: Any, operand: Any) -> bool | str:
    if not isinstance(operand, list):
        return f"in needs a list, got {_kind(operand)} {_show(operand)}"
    return any(same(value, item) for item in operand)


def _contains(value: Any, operand: Any) -> bool | str:
    if isinstance(value, list):
        return any(same(item, operand) for item in value)
    if isinstance(value, str) and isinstance(operand, str):
        return operand in value
    return f"contains needs a list, or a string and a string; got {_kind(value)} and {_kind(operand)}"


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
    return operand if _is_ref(operand) else _show(operand)
