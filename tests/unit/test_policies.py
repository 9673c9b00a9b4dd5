"""The policy engine: every operator, type mismatches, nesting, deny-overrides, defaults, invalid policies."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.errors import InvalidArgument
from services.core.policy import Decision, dry_run, evaluate, lookup, parse_policy, same

ALICE = {"sub": "alice", "tenant": "acme", "roles": ["developer"], "team": "blue"}


def rule(effect: str = "allow", condition: Any = None, actions: Any = ("read",), resource: str = "orders/*"):
    out: dict[str, Any] = {"effect": effect, "actions": list(actions), "resource": resource}
    if condition is not None:
        out["condition"] = condition
    return out


def decide(
    *rules: dict[str, Any],
    record: Any = None,
    action: str = "read",
    resource: str = "orders/1",
    subject: Any = None,
) -> Decision:
    policy = parse_policy({"name": "p", "rules": list(rules)})
    return evaluate(policy, record or {}, action, resource, subject or ALICE)


def holds(condition: dict[str, Any], record: Any = None, subject: Any = None) -> Decision:
    return decide(rule("allow", condition), record=record, subject=subject)


# ------------------------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("condition", "record", "allowed"),
    [
        ({"record.owner": "alice"}, {"owner": "alice"}, True),
        ({"record.owner": "alice"}, {"owner": "bob"}, False),
        ({"record.owner": {"eq": "alice"}}, {"owner": "alice"}, True),
        ({"record.owner": {"ne": "alice"}}, {"owner": "bob"}, True),
        ({"record.owner": {"ne": "alice"}}, {"owner": "alice"}, False),
        ({"record.status": {"in": ["open", "held"]}}, {"status": "held"}, True),
        ({"record.status": {"in": ["open", "held"]}}, {"status": "closed"}, False),
        ({"record.amount": {"gt": 100}}, {"amount": 101}, True),
        ({"record.amount": {"gt": 100}}, {"amount": 100}, False),
        ({"record.amount": {"gte": 100}}, {"amount": 100}, True),
        ({"record.amount": {"lt": 100}}, {"amount": 99.5}, True),
        ({"record.amount": {"lt": 100}}, {"amount": 100}, False),
        ({"record.amount": {"lte": 100}}, {"amount": 100.0}, True),
        ({"record.amount": {"lte": 100}}, {"amount": 100.01}, False),
        ({"record.day": {"gte": "2024-01-01"}}, {"day": "2024-03-05"}, True),
        ({"record.tags": {"contains": "vip"}}, {"tags": ["new", "vip"]}, True),
        ({"record.tags": {"contains": "vip"}}, {"tags": ["new"]}, False),
        ({"record.title": {"contains": "urgent"}}, {"title": "very urgent fix"}, True),
        ({"record.title": {"contains": "urgent"}}, {"title": "later"}, False),
        ({"record.owner": {"exists": True}}, {"owner": "x"}, True),
        ({"record.owner": {"exists": True}}, {}, False),
        ({"record.owner": {"exists": True}}, {"owner": None}, False),
        ({"record.owner": {"exists": False}}, {}, True),
        ({"record.owner": {"exists": False}}, {"owner": "x"}, False),
        ({"record.amount": {"gte": 10, "lt": 20}}, {"amount": 15}, True),
        ({"record.amount": {"gte": 10, "lt": 20}}, {"amount": 20}, False),
        ({"record.deleted": {"exists": False}}, {"deleted": None}, True),
        ({"record.deleted": {"ne": 1}}, {"deleted": None}, False),  # null satisfies nothing, not even ne
        ({"record.deleted": {"in": [1, 2]}}, {"deleted": None}, False),
        ({"record.meta": {"eq": {"a": [1, 2]}}}, {"meta": {"a": [1, 2]}}, True),
        ({"record.meta": {"eq": {"a": [1, 2]}}}, {"meta": {"a": [2, 1]}}, False),
    ],
)
def test_operator(condition: dict[str, Any], record: dict[str, Any], allowed: bool) -> None:
    decision = holds(condition, record)
    assert decision.decision == ("allow" if allowed else "deny")
    assert decision.rule_index == (0 if allowed else -1)


def test_matched_reason_names_the_rule_and_conditions() -> None:
    decision = decide(rule("deny", {"record.owner": {"ne": "$subject.sub"}}), record={"owner": "bob"})
    assert decision == Decision("deny", 0, "rule 0 (deny) matched: record.owner ne $subject.sub", "p")


def test_several_conditions_are_all_required_and_all_reported() -> None:
    condition = {"record.owner": "$subject.sub", "record.amount": {"lte": 50}}
    ok = holds(condition, {"owner": "alice", "amount": 10})
    assert ok.decision == "allow"
    assert ok.reason == "rule 0 (allow) matched: record.amount lte 50 and record.owner eq $subject.sub"
    partial = holds(condition, {"owner": "alice", "amount": 60})
    assert partial.decision == "deny"
    assert "record.amount lte 50 is false (record.amount is 60)" in partial.reason


# ------------------------------------------------------------------------------------ types and missing


@pytest.mark.parametrize(
    ("condition", "record", "why"),
    [
        ({"record.amount": {"gt": 100}}, {"amount": "150"}, 'cannot compare string "150" with number 100'),
        ({"record.day": {"lt": "2024"}}, {"day": 2023}, 'cannot compare number 2023 with string "2024"'),
        ({"record.flag": {"gt": 0}}, {"flag": True}, "cannot compare boolean true with number 0"),
        ({"record.amount": {"gt": 1}}, {"amount": None}, "record.amount is null"),
        ({"record.n": {"contains": 1}}, {"n": 12}, "contains needs a list, or a string and a string"),
        ({"record.n": {"in": "$subject.team"}}, {"n": "blue"}, 'in needs a list, got string "blue"'),
    ],
)
def test_type_mismatch_is_not_matched_with_a_reason(condition: Any, record: Any, why: str) -> None:
    decision = holds(condition, record)
    assert (decision.decision, decision.rule_index) == ("deny", -1)
    assert why in decision.reason


def test_equality_is_strict_about_json_types() -> None:
    assert same(1, 1.0)
    assert not same(True, 1)
    assert not same("1", 1)
    assert not same(None, False)
    assert not same([1], [1, 1])
    assert holds({"record.active": True}, {"active": 1}).decision == "deny"
    assert holds({"record.count": 1}, {"count": 1.0}).decision == "allow"


def test_missing_field_matches_nothing_but_exists_false() -> None:
    for op in ("eq", "ne", "gt", "in", "contains"):
        operand = ["x"] if op == "in" else "x"
        decision = holds({"record.owner": {op: operand}}, {})
        assert decision.decision == "deny", op
        assert "record.owner is missing" in decision.reason


def test_nested_record_fields_and_list_indexes() -> None:
    record = {"a": {"b": {"c": 5}}, "items": [{"sku": "x1"}]}
    assert holds({"record.a.b.c": {"gte": 5}}, record).decision == "allow"
    assert holds({"record.items.0.sku": "x1"}, record).decision == "allow"
    assert "record.a.x.c is missing" in holds({"record.a.x.c": 5}, record).reason
    assert lookup(record, ["items", "1", "sku"]) is lookup({}, ["nope"])  # both MISSING
    assert lookup({"a": "str"}, ["a", "b"]) is lookup({}, ["x"])


# ---------------------------------------------------------------------------------- subject references


def test_subject_reference_operands() -> None:
    assert holds({"record.owner": "$subject.sub"}, {"owner": "alice"}).decision == "allow"
    assert holds({"record.tenant": {"eq": "$subject.tenant"}}, {"tenant": "acme"}).decision == "allow"
    assert holds({"record.role": {"in": "$subject.roles"}}, {"role": "developer"}).decision == "allow"
    other = holds({"record.tenant": "$subject.tenant"}, {"tenant": "globex"})
    assert other.decision == "deny"
    assert 'record.tenant eq $subject.tenant is false (record.tenant is "globex")' in other.reason


def test_subject_references_inside_in_lists() -> None:
    condition = {"record.owner": {"in": ["$subject.sub", "root"]}}
    assert holds(condition, {"owner": "alice"}).decision == "allow"
    assert holds(condition, {"owner": "root"}).decision == "allow"
    assert holds(condition, {"owner": "bob"}).decision == "deny"


def test_missing_subject_reference_is_not_matched() -> None:
    decision = holds({"record.team": "$subject.department"}, {"team": "blue"})
    assert decision.decision == "deny"
    assert "$subject.department is missing" in decision.reason


def test_subject_conditions() -> None:
    admin_only = {"subject.roles": {"contains": "admin"}}
    assert holds(admin_only, subject=ALICE).decision == "deny"
    assert holds(admin_only, subject={**ALICE, "roles": ["admin"]}).decision == "allow"
    assert holds({"subject.team": "blue"}).decision == "allow"


# ------------------------------------------------------------------------------------- rule combination


def test_deny_overrides_an_earlier_allow() -> None:
    decision = decide(rule("allow"), rule("deny", {"record.secret": True}), record={"secret": True})
    assert (decision.decision, decision.rule_index) == ("deny", 1)
    assert decision.reason == "rule 1 (deny) matched: record.secret eq true; overrides allow from rule 0"


def test_deny_first_wins_over_later_allow() -> None:
    decision = decide(rule("deny", {"record.secret": True}), rule("allow"), record={"secret": True})
    assert (decision.decision, decision.rule_index) == ("deny", 0)


def test_first_matching_allow_is_reported() -> None:
    decision = decide(rule("allow", {"record.x": 2}), rule("allow"), rule("allow"), record={"x": 1})
    assert (decision.decision, decision.rule_index) == ("allow", 1)
    assert decision.reason == "rule 1 (allow) matched: action 'read' on 'orders/1', no conditions"


def test_allow_reason_names_deny_rules_whose_conditions_failed() -> None:
    decision = decide(
        rule("allow"),
        rule("deny", {"record.amount": {"gt": 100}}),
        rule("deny", actions=["delete"]),  # out of scope: not mentioned
        record={"amount": "lots"},
    )
    assert (decision.decision, decision.rule_index) == ("allow", 0)
    assert decision.reason == (
        "rule 0 (allow) matched: action 'read' on 'orders/1', no conditions; "
        'rule 1 (deny) not matched: record.amount gt 100: cannot compare string "lots" with number 100'
    )


def test_no_match_denies_and_explains_each_rule() -> None:
    decision = decide(
        rule("allow", actions=["write"]),
        rule("allow", resource="invoices/*"),
        rule("allow", {"record.owner": "$subject.sub"}),
        record={"owner": "bob"},
    )
    assert (decision.decision, decision.rule_index) == ("deny", -1)
    assert decision.reason.startswith("no rule matched (default deny): ")
    assert "rule 0 (allow) skipped: action 'read' not in ['write']" in decision.reason
    assert "rule 1 (allow) skipped: resource 'orders/1' does not match 'invoices/*'" in decision.reason
    assert "rule 2 (allow) not matched: record.owner eq $subject.sub is false" in decision.reason


@pytest.mark.parametrize(
    ("actions", "resource", "action", "target", "applies"),
    [
        (["*"], "*", "anything", "any/thing", True),
        (["read", "list"], "orders/*", "list", "orders/", True),
        (["read"], "orders/*", "read", "order", False),
        (["read"], "orders/1", "read", "orders/10", False),
        (["data.*"], "db", "data.query", "db", True),
        (["data.*"], "db", "storage.put", "db", False),
    ],
)
def test_action_and_resource_globs(
    actions: Any, resource: str, action: str, target: str, applies: bool
) -> None:
    decision = decide(rule("allow", actions=actions, resource=resource), action=action, resource=target)
    assert (decision.decision == "allow") is applies


def test_dry_run_returns_one_decision_per_record_in_order() -> None:
    policy = parse_policy(
        {
            "name": "owners-only",
            "rules": [
                {"effect": "allow", "actions": ["read"], "resource": "orders/*",
                 "condition": {"record.tenant": "$subject.tenant"}},
                {"effect": "deny", "actions": ["*"], "resource": "*",
                 "condition": {"record.owner": {"ne": "$subject.sub"}}},
            ],
        }
    )  # fmt: skip
    records = [
        {"tenant": "acme", "owner": "alice"},
        {"tenant": "acme", "owner": "bob"},
        {"tenant": "globex", "owner": "alice"},
    ]
    got = [(d.decision, d.rule_index) for d in dry_run(policy, records, "read", "orders/7", ALICE)]
    assert got == [("allow", 0), ("deny", 1), ("deny", -1)]


def test_dry_run_requires_action_resource_and_bounds_records() -> None:
    policy = parse_policy({"name": "p", "rules": [rule()]})
    with pytest.raises(InvalidArgument, match="action is required"):
        dry_run(policy, [{}], "", "orders/1", ALICE)
    with pytest.raises(InvalidArgument, match="resource is required"):
        dry_run(policy, [{}], "read", "", ALICE)
    with pytest.raises(InvalidArgument, match="at most 1000 records"):
        dry_run(policy, [{}] * 1001, "read", "orders/1", ALICE)
    assert dry_run(policy, [], "read", "orders/1", ALICE) == []


# ------------------------------------------------------------------------------------- invalid policies


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ([], "policy must be an object"),
        ({"rules": [rule()]}, "policy.name must be"),
        ({"name": "", "rules": [rule()]}, "policy.name must be"),
        ({"name": "bad name", "rules": [rule()]}, "policy.name must be"),
        ({"name": "p"}, "policy.rules must be a non-empty list"),
        ({"name": "p", "rules": []}, "policy.rules must be a non-empty list"),
        ({"name": "p", "rules": [rule()] * 201}, "at most 200"),
        ({"name": "p", "rules": [rule(), "allow"]}, "rules[1] must be an object"),
        ({"name": "p", "rules": [rule(), rule(), {**rule(), "effect": "permit"}]},
         "rules[2].effect must be allow or deny"),
        ({"name": "p", "rules": [{**rule(), "effect": None}]}, "rules[0].effect must be allow or deny"),
        ({"name": "p", "rules": [{**rule(), "efect": "allow"}]}, "rules[0] has unknown field 'efect'"),
        ({"name": "p", "rules": [{**rule(), "actions": []}]}, "rules[0].actions must be a non-empty list"),
        ({"name": "p", "rules": [{**rule(), "actions": "read"}]}, "rules[0].actions must be"),
        ({"name": "p", "rules": [{**rule(), "actions": ["re*d"]}]}, "rules[0].actions must be"),
        ({"name": "p", "rules": [{**rule(), "actions": [""]}]}, "rules[0].actions must be"),
        ({"name": "p", "rules": [{**rule(), "resource": ""}]}, "rules[0].resource must be"),
        ({"name": "p", "rules": [{**rule(), "resource": "a*/b"}]}, "'*' may appear only at the end"),
        ({"name": "p", "rules": [{**rule(), "resource": 5}]}, "rules[0].resource must be"),
        ({"name": "p", "rules": [rule(condition=["x"])]}, "rules[0].condition must be an object"),
        ({"name": "p", "rules": [rule(condition={"owner": 1})]},
         "key 'owner' must be 'record.<field>' or 'subject.<field>'"),
        ({"name": "p", "rules": [rule(condition={"record.": 1})]}, "key 'record.' must be"),
        ({"name": "p", "rules": [rule(condition={"record.a..b": 1})]}, "key 'record.a..b' must be"),
        ({"name": "p", "rules": [rule(condition={"env.x": 1})]}, "key 'env.x' must be"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"like": "x%"}})]},
         "rules[0].condition['record.a'] has unknown operator 'like'"),
        ({"name": "p", "rules": [rule(condition={"record.a": {}})]}, "must name an operator"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"in": "x"}})]},
         "rules[0].condition['record.a'].in operand must be a list"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"exists": "yes"}})]},
         "exists operand must be true or false"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"gt": [1]}})]},
         "gt operand must be a number or a string"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"gt": True}})]},
         "gt operand must be a number or a string"),
        ({"name": "p", "rules": [rule(condition={"record.a": "$subject."})]},
         "reference '$subject.' must be '$subject.<field>'"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"in": ["$subject.x.", 1]}})]},
         "reference '$subject.x.' must be"),
        ({"name": "p", "rules": [rule(condition={f"record.f{i}": 1 for i in range(33)})]}, "at most 32"),
        ({"name": "p", "rules": [rule(condition={"record.a": None})]},
         """rules[0].condition['record.a'] null never matches (a missing or null field satisfies nothing); use {"exists": false}"""),
        ({"name": "p", "rules": [rule(condition={"record.a": {"ne": None}})]}, "null never matches"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"in": [1, None]}})]},
         "in null never matches; leave it out of the list"),
        ({"name": "p", "rules": [rule(condition={"record.a": {"exists": "$subject.flag"}})]},
         "exists operand must be true or false"),
        ({"name": "p", "rules": [rule(condition={"record.tags.-1": "x"})]},
         "'record.tags.-1': '-1' is not a list index; use 0, 1, 2, ... (from the start)"),
        ({"name": "p", "rules": [rule(condition={"record.a": "$subject.roles. 1"})]}, "' 1' is not a list index"),
    ],
)  # fmt: skip
def test_invalid_policy_names_the_offending_part(policy: Any, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_policy(policy)
    assert message in caught.value.message


def test_invalid_rule_error_carries_the_field_detail() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_policy({"name": "p", "rules": [rule(), {**rule(), "effect": "nope"}]})
    assert caught.value.details == {"field": "rules[1].effect"}


def test_condition_is_optional_and_null_means_none() -> None:
    policy = parse_policy({"name": "p", "rules": [{**rule(), "condition": None}]})
    assert policy.rules[0].conditions == ()


def test_dry_run_work_is_bounded() -> None:
    heavy = {f"record.f{i}": i for i in range(30)}
    policy = parse_policy({"name": "p", "rules": [rule("allow", heavy)] * 10})  # 10 x 31 steps per record
    assert len(dry_run(policy, [{}] * 300, "read", "orders/1", ALICE)) == 300  # 93,000 steps
    with pytest.raises(InvalidArgument, match="dry run too large: 400 records x 10 rules"):
        dry_run(policy, [{}] * 400, "read", "orders/1", ALICE)


def test_reasons_stay_short_with_many_rules() -> None:
    rules = [rule("allow", {"record.n": i}) for i in range(25)]
    decision = decide(*rules, record={"n": -1})
    assert decision.reason.count("not matched") == 10
    assert decision.reason.endswith("; 15 more rules did not apply")


def test_a_non_ascii_digit_in_a_path_is_a_missing_field_not_a_crash() -> None:
    # "²".isdigit() is True, int("²") raises: a stored policy must never crash a decision
    decision = holds({"subject.roles.²": "developer"}, subject={**ALICE, "roles": ["developer"]})
    assert decision.decision == "deny" and "subject.roles.² is missing" in decision.reason
