"""A tenant's policy set: which resources it governs, how rules of several policies combine, and the SQL
renderer's compile-time refusals (a condition that can never hold for a column's type)."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.context import Principal
from services.core.errors import InvalidArgument
from services.core.policy import compile_set, governed, kind_of, subject_of
from services.core.policy.sql import render_table

OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
ALICE = {"sub": "alice", "tenant": "acme", "roles": ["developer"]}


def rule(
    resource: str, effect: str = "allow", actions: Any = ("read",), condition: Any = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"effect": effect, "actions": list(actions), "resource": resource}
    if condition:
        out["condition"] = condition
    return out


def one(*rules: dict[str, Any]) -> Any:
    return compile_set([{"name": "p", "rules": list(rules)}])


def test_resource_kinds() -> None:
    assert kind_of("notes") == "table"
    assert kind_of("storage:photos/a.png") == "storage"
    assert kind_of("realtime:chat") == "realtime"


def test_a_table_is_governed_by_a_rule_naming_it_and_patterns_too() -> None:
    policies = one(rule("notes"), rule("orders*"))
    assert policies.governs("notes")
    assert policies.governs("orders_2024")
    assert not policies.governs("customers")
    assert not policies.governs("storage:notes/x")  # a table rule never governs storage


def test_any_storage_rule_governs_all_storage_and_any_realtime_rule_all_topics() -> None:
    policies = one(rule("storage:photos/*"), rule("realtime:team-a*"))
    assert policies.governs("storage:docs/readme.md")
    assert policies.governs("realtime:announcements")
    assert not policies.governs("notes")
    # ... and on governed storage, what no rule allows is denied
    assert policies.decide("read", "storage:docs/readme.md", {}, ALICE).decision == "deny"
    assert policies.allows("read", "storage:photos/cat.png", {}, ALICE)


def test_table_patterns_never_match_other_kinds() -> None:
    policies = one(rule("*"), rule("storage:b/*", effect="deny"))
    assert policies.allows("read", "anything", {}, ALICE)
    assert not policies.allows("read", "storage:b/k", {}, ALICE)  # `*` is a table pattern: no allow here


def test_write_covers_insert_update_and_delete() -> None:
    policies = one(rule("notes", actions=["write"]))
    for action in ("insert", "update", "delete", "write"):
        assert policies.allows(action, "notes", {}, ALICE), action
    assert not policies.allows("read", "notes", {}, ALICE)


def test_rules_of_several_policies_combine_and_a_deny_anywhere_wins() -> None:
    policies = compile_set(
        [OWN_ROWS, {"name": "no-drafts", "rules": [rule("notes", "deny", condition={"record.draft": True})]}]
    )
    mine = policies.decide("read", "notes", {"owner": "alice", "draft": False}, ALICE)
    assert (mine.decision, mine.policy) == ("allow", "own-rows")
    assert mine.reason.startswith("own-rows rule 0 (allow) matched")
    draft = policies.decide("read", "notes", {"owner": "alice", "draft": True}, ALICE)
    assert (draft.decision, draft.policy, draft.rule_index) == ("deny", "no-drafts", 0)
    assert "no-drafts rule 0 (deny) matched" in draft.reason


def test_admins_are_not_governed_and_the_subject_is_the_token() -> None:
    admin = Principal("root", "acme", ("admin",))
    dev = Principal("alice", "acme", ("developer",))
    assert not governed(admin)
    assert governed(dev)
    assert subject_of(dev) == ALICE


NOTES = {"id": "bigint", "owner": "text", "done": "boolean", "meta": "jsonb", "amount": "numeric"}


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"record.owner.name": "x"}, "column 'owner' is text, which has no field 'name'"),
        ({"record.done": {"gt": 1}}, "column 'done' is boolean, which has no order"),
        ({"record.amount": "5"}, "column 'amount' holds numbers, and the operand is a string"),
        (
            {"record.amount": {"contains": 5}},
            "column 'amount' holds numbers; contains needs a list or a string",
        ),
        ({"record.owner": {"in": [1, 2]}}, "column 'owner' holds strings; no element of the list is one"),
    ],
)
def test_strict_rendering_names_table_and_column(condition: dict[str, Any], message: str) -> None:
    policies = compile_set([{"name": "p", "rules": [rule("notes", condition=condition)]}])
    with pytest.raises(InvalidArgument) as caught:
        render_table(policies, "notes", NOTES, "read", "postgresql", strict=True)
    assert "p rules[0]" in caught.value.message and "table 'notes'" in caught.value.message
    assert message in caught.value.message
    # Enforcement (not strict) never errors: the condition just cannot hold.
    assert render_table(policies, "notes", NOTES, "read", "postgresql").allow.startswith("(")


def test_a_column_the_table_lacks_is_missing_never_an_error() -> None:
    policies = compile_set([{"name": "p", "rules": [rule("notes", condition={"record.team": "blue"})]}])
    predicate = render_table(policies, "notes", NOTES, "read", "postgresql", strict=True)
    assert predicate.allow.endswith("AND ((false)))")  # only verified callers, and even they get nothing
    sqlite = render_table(policies, "notes", {"owner": "TEXT"}, "read", "sqlite", ALICE, strict=True)
    assert sqlite.passes == "((((0))) AND NOT (0))"


def test_subject_values_reach_postgresql_through_the_claims_once_per_statement() -> None:
    predicate = render_table(compile_set([OWN_ROWS]), "notes", NOTES, "read", "postgresql")
    assert '"owner" = ' in predicate.allow  # native comparison: an index on owner serves it
    assert "FROM (select launchpad.claims() #> ARRAY['sub']::text[]) AS x(c)" in predicate.allow
    assert predicate.deny == "false"


def test_sqlite_inlines_the_subject_as_quoted_literals() -> None:
    hostile = {**ALICE, "sub": "x' OR 1=1 --"}
    predicate = render_table(compile_set([OWN_ROWS]), "notes", {"owner": "TEXT"}, "read", "sqlite", hostile)
    assert "'x'' OR 1=1 --' COLLATE BINARY" in predicate.allow


def test_a_table_named_like_another_kind_is_still_a_table() -> None:
    """`*` governs every table, "storage:x" included: the data backends say what the resource is."""
    policies = one(rule("*", condition={"record.owner": "$subject.sub"}))
    assert policies.governs("storage:x", kind="table")
    predicate = render_table(policies, "storage:x", {"owner": "TEXT"}, "read", "sqlite", ALICE)
    assert "'alice'" in predicate.allow
