"""The policy language: parsing, with errors that name the offending part, into a small typed IR.

A policy is `{name, rules: [{effect, actions, resource, condition}]}`. The IR (Policy, Rule, Condition) is
what every rendering reads: the Python decision (decide.py) and the SQL predicates (sql.py), so what the dry
run says and what PostgreSQL, SQLite, storage and realtime enforce come from one parse.

Values follow JSON: numbers (int or float, never bool), strings, booleans, lists, objects. A null operand is
refused: a missing or null field satisfies nothing but `exists: false`, so `eq: null` could never hold.
Conditions are kept in key order (JSON objects and protobuf Structs carry no order; all must hold anyway, the
order only shapes the reason text). Nothing here imports grpc; the servicer converts Structs into plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.core.errors import InvalidArgument

EFFECTS = ("allow", "deny")
OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists")
SUBJECT_REF = "$subject."
MAX_RULES = 200
MAX_CONDITIONS = 32
# A rule's `write` covers the three ways a table row is written.
WRITE_ACTIONS = ("insert", "update", "delete")
STORAGE, REALTIME = "storage:", "realtime:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_RULE_FIELDS = frozenset({"effect", "actions", "resource", "condition"})


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

    def covers(self, action: str) -> bool:
        return any(_glob(p, action) or (p == "write" and action in WRITE_ACTIONS) for p in self.actions)

    def names(self, resource: str, kind: str | None = None) -> bool:
        """Whether the rule's resource pattern matches: only resources of the same kind (a table pattern such
        as `*` or `orders*` never matches a `storage:` object or a `realtime:` topic). `kind` says what the
        resource is when its name alone cannot (a table may be called "storage:x")."""
        return kind_of(self.resource) == (kind or kind_of(resource)) and _glob(self.resource, resource)


def kind_of(resource: str) -> str:
    """'storage', 'realtime' or 'table' (a bare name)."""
    if resource.startswith(STORAGE):
        return "storage"
    return "realtime" if resource.startswith(REALTIME) else "table"


def _glob(pattern: str, value: str) -> bool:
    """Exact match, or a prefix match when the pattern ends in '*' ('*' alone matches everything)."""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]


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
    _check_indexes(where, str(key), path)
    return scope, path


# A list index is plain ASCII digits. PostgreSQL would also read " 1", "+1" and "-1" (from the end) as
# indexes where the Python decision finds nothing: refused, so the dry run and enforcement cannot disagree.
_LOOSE_INDEX = re.compile(r"^\s*[+-]?\s*\d+\s*$")


def _check_indexes(where: str, key: str, path: tuple[str, ...]) -> None:
    for part in path:
        if _LOOSE_INDEX.match(part) and not (part.isascii() and part.isdigit()):
            raise _fail(where, f"{key!r}: {part!r} is not a list index; use 0, 1, 2, ... (from the start)")


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
    if op == "exists":
        if not isinstance(operand, bool):
            raise _fail(where, "operand must be true or false")
        return
    if is_ref(operand):
        _ref_path(where, operand)
        return
    if operand is None:
        raise _fail(
            where, 'null never matches (a missing or null field satisfies nothing); use {"exists": false}'
        )
    if op == "in" and not isinstance(operand, list):
        raise _fail(where, "operand must be a list or a $subject reference")
    if op in ("gt", "gte", "lt", "lte") and not (is_number(operand) or isinstance(operand, str)):
        raise _fail(where, "operand must be a number or a string")
    for item in operand if op == "in" else ():
        if item is None:
            raise _fail(where, "null never matches; leave it out of the list")
        if is_ref(item):
            _ref_path(where, item)


def is_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SUBJECT_REF)


def ref_path(ref: str) -> tuple[str, ...]:
    return tuple(ref[len(SUBJECT_REF) :].split("."))


def _ref_path(where: str, ref: str) -> tuple[str, ...]:
    path = ref_path(ref)
    if not all(path):
        raise _fail(where, f"reference {ref!r} must be '$subject.<field>'")
    _check_indexes(where, ref, path)
    return path


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
