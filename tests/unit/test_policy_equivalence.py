"""One policy, three renderings, one answer: generated policies x generated rows, the Python decision (what
the dry run, storage and realtime use) == the rows SQLite returns under the rendered predicate == the rows real
PostgreSQL returns under it (live: POSTGRES_DSN).

The records Python decides on are the rows as each database holds them (SQLite keeps booleans as 0/1;
PostgreSQL's JSON view comes from to_jsonb), so the property is exactly "what you are served is what the
dry run says". Values are drawn from small pools so that equal, near-equal and cross-type pairs are common.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.policy import PolicySet, parse_policy
from services.core.policy.sql import render_table, sqlite_value
from tests.support import PrivateDatabase, need_env

# One small pool for row values and operands, so that equal, near-equal (1 and 1.0, "1" and 1, true and 1)
# and cross-type pairs are common.
POOL = [0, 1, 1.0, -1, 0.5, 2**40, "", "a", "b", "B", "ab", "é", "1", "a'b", True, False]
SCALARS = st.sampled_from(POOL)
JSON = st.recursive(
    st.one_of(st.none(), SCALARS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "0"]), inner, max_size=2)
    ),
    max_leaves=5,
)
SUBJECT_FIELDS = ["sub", "roles", "level", "flag", "team", "meta.a", "meta.0", "nothing"]
REFS = st.sampled_from([f"$subject.{f}" for f in SUBJECT_FIELDS])
SUBJECTS = st.fixed_dictionaries(
    {"sub": st.sampled_from(["a", "b", "B"]), "roles": st.lists(SCALARS, max_size=3)},
    optional={
        "level": SCALARS,
        "flag": st.one_of(st.none(), st.booleans()),
        "team": st.one_of(st.none(), SCALARS),
        "meta": st.one_of(
            st.dictionaries(st.sampled_from(["a", "0"]), JSON, max_size=2), st.lists(JSON, max_size=2)
        ),
    },
)
NON_NULL = st.one_of(SCALARS, JSON.filter(lambda v: v is not None))  # mostly scalars


def operand(op: str) -> st.SearchStrategy[Any]:
    if op == "exists":
        return st.booleans()
    if op == "in":
        return st.one_of(
            REFS, st.lists(st.one_of(REFS, *[NON_NULL] * 4), max_size=3), *[st.lists(SCALARS, max_size=3)] * 2
        )
    if op in ("gt", "gte", "lt", "lte"):
        return st.one_of(SCALARS.filter(lambda v: not isinstance(v, bool)), REFS)
    return st.one_of(NON_NULL, REFS)


OPS = ["eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists"]


@st.composite
def conditions(draw: st.DrawFn, fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3]))):
        key = draw(
            st.sampled_from([*(f"record.{f}" for f in fields), *(f"subject.{f}" for f in SUBJECT_FIELDS)])
        )
        op = draw(st.sampled_from(OPS))
        out.setdefault(key, {})[op] = draw(operand(op))
    return out


@st.composite
def policy_sets(draw: st.DrawFn, fields: list[str]) -> PolicySet:
    """An allow rule in scope (read on t), then up to two rules of any effect, action and resource."""
    first = {"effect": "allow", "actions": ["read"], "resource": "t", "condition": draw(conditions(fields))}
    rules = [first] + [
        {
            "effect": draw(st.sampled_from(["allow", "allow", "deny"])),
            "actions": [draw(st.sampled_from(["read", "read", "*", "write"]))],
            "resource": draw(st.sampled_from(["t", "t", "t*", "*", "other"])),
            "condition": draw(conditions(fields)),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    return PolicySet((parse_policy({"name": "p", "rules": rules}),))


@st.composite
def one_condition_sets(draw: st.DrawFn, fields: list[str]) -> PolicySet:
    """One condition, as an allow (the row must satisfy it) or as a deny under an allow-all (the row must not:
    an unevaluable deny must not filter the row, so SQL's NOT NULL trap shows here)."""
    condition = draw(conditions(fields).filter(lambda c: len(c) == 1))
    if draw(st.booleans()):
        rules = [{"effect": "allow", "actions": ["read"], "resource": "t", "condition": condition}]
    else:
        rules = [
            {"effect": "allow", "actions": ["read"], "resource": "t"},
            {"effect": "deny", "actions": ["read"], "resource": "t", "condition": condition},
        ]
    return PolicySet((parse_policy({"name": "p", "rules": rules}),))


@st.composite
def tables(draw: st.DrawFn, pools: dict[str, list[Any]], size: int = 10) -> list[dict[str, Any]]:
    """Rows whose every column takes distinct values from its pool (a shuffle each): diverse tables, always."""
    columns = {name: draw(st.permutations(pool)) for name, pool in pools.items()}
    return [{name: values[i % len(values)] for name, values in columns.items()} for i in range(size)]


def allowed_by_python(
    policies: PolicySet, rows: dict[int, dict[str, Any]], subject: dict[str, Any]
) -> set[int]:
    return {key for key, record in rows.items() if policies.allows("read", "t", record, subject)}


# --- SQLite ---------------------------------------------------------------------------------------------

SQLITE_COLUMNS = {"n": "INTEGER", "r": "REAL", "s": "TEXT", "x": "", "f": "BOOLEAN"}
SQLITE_FIELDS = ["n", "r", "s", "x", "f", "x.a", "nope"]
SQLITE_POOL = [None, *POOL]
SQLITE_POOLS = {**dict.fromkeys(SQLITE_COLUMNS, SQLITE_POOL), "f": [None, 0, 1, 2, 0.5, "a", True, False]}


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies=st.one_of(one_condition_sets(SQLITE_FIELDS), policy_sets(SQLITE_FIELDS)),
    rows=tables(SQLITE_POOLS),
    subject=SUBJECTS,
)
def test_sqlite_returns_exactly_the_rows_python_allows(
    policies: PolicySet, rows: list[dict[str, Any]], subject: dict[str, Any]
) -> None:
    conn = sqlite3.connect(":memory:")
    columns = ", ".join(f'"{name}" {type_}' for name, type_ in SQLITE_COLUMNS.items())
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {columns})")
    for row in rows:
        conn.execute("INSERT INTO t (n, r, s, x, f) VALUES (:n, :r, :s, :x, :f)", row)
    stored = {  # the rows as SQLite holds them, as policies see them (0/1 of the BOOLEAN column: booleans)
        key: {
            name: sqlite_value(SQLITE_COLUMNS[name], v)
            for name, v in zip(SQLITE_COLUMNS, values, strict=True)
        }
        for key, *values in conn.execute("SELECT id, n, r, s, x, f FROM t")
    }
    predicate = render_table(policies, "t", SQLITE_COLUMNS, "read", "sqlite", subject)
    served = {key for (key,) in conn.execute(f"SELECT id FROM t WHERE {predicate.passes}")}
    assert served == allowed_by_python(policies, stored, subject), predicate.passes


# --- PostgreSQL (live) ------------------------------------------------------------------------------------

PG_COLUMNS = {"num": "numeric", "i": "bigint", "s": "text", "b": "boolean", "j": "jsonb", "tags": "text[]"}
PG_FIELDS = ["num", "s", "b", "j", "i", "tags", "j.a", "j.0", "tags.0", "nope"]
NUMBERS = [v for v in POOL if isinstance(v, int | float) and not isinstance(v, bool)]
JSON_VALUES = [
    None,
    *POOL,
    [],
    ["a"],
    ["a", 1],
    [1.0],
    {"a": 1},
    {"a": "b"},
    {"a": None},
    {"0": True},
    [{"a": 1}],
]
PG_POOLS: dict[str, list[Any]] = {
    "num": [None, *NUMBERS],
    "i": [None, 0, 1, -1, 2**40],
    "s": [None, *(v for v in POOL if isinstance(v, str))],
    "b": [None, True, False],
    "j": [None, *map(psycopg2.extras.Json, JSON_VALUES)],
    "tags": [None, [], ["a"], ["a", "b"], ["B", ""], ["b"]],
}
CLAIMS_FUNCTION = """
CREATE SCHEMA IF NOT EXISTS launchpad;
CREATE OR REPLACE FUNCTION launchpad.claims() RETURNS jsonb LANGUAGE sql STABLE
AS $$ SELECT nullif(current_setting('request.jwt.claims', true), '')::jsonb $$;
"""


@pytest.fixture(scope="module")
def pg() -> Iterator[psycopg2.extensions.connection]:
    """A scratch database of our own with a stand-in launchpad.claims() (the real one verifies a signature)."""
    database = PrivateDatabase(need_env("POSTGRES_DSN"), prefix="lp_policy_eq")
    conn = psycopg2.connect(database.dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(CLAIMS_FUNCTION)
        yield conn
    finally:
        conn.close()
        database.drop()


@pytest.mark.live
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    policies=st.one_of(one_condition_sets(PG_FIELDS), policy_sets(PG_FIELDS)),
    rows=tables(PG_POOLS),
    subject=SUBJECTS,
)
def test_postgresql_returns_exactly_the_rows_python_allows(
    pg: psycopg2.extensions.connection,
    policies: PolicySet,
    rows: list[dict[str, Any]],
    subject: dict[str, Any],
) -> None:
    predicate = render_table(policies, "t", PG_COLUMNS, "read", "postgresql")
    columns = ", ".join(f"{name} {type_}" for name, type_ in PG_COLUMNS.items())
    try:
        with pg.cursor() as cur:
            cur.execute(f"CREATE TEMP TABLE t (id serial PRIMARY KEY, {columns}) ON COMMIT DROP")
            for row in rows:
                cur.execute(
                    "INSERT INTO t (num, i, s, b, j, tags) VALUES (%(num)s, %(i)s, %(s)s, %(b)s, %(j)s, %(tags)s)",
                    row,
                )
            cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(subject),))
            cur.execute("SELECT id, to_jsonb(t) - 'id' FROM t")
            stored = dict(cur.fetchall())
            cur.execute(f"SELECT id FROM t WHERE {predicate.passes}")
            served = {key for (key,) in cur.fetchall()}
    finally:
        pg.rollback()
    assert served == allowed_by_python(policies, stored, subject), predicate.passes
