"""Pure parts of the AI service: reading a model's reply, cleaning SQL, words of names, identifier quoting,
the embedded generator's parser and renderer apart, and the validator's own checks (with a stub EXPLAIN)."""

from __future__ import annotations

import dataclasses

import pytest

from services.ai.llm import parse_answer, parse_suggestions
from services.ai.parser.pipeline import parse
from services.ai.query import Agg, Cond, Exists, Join, Order, Query, Rows
from services.ai.render import explain, ident, literal, render
from services.ai.schema import (
    CannotAnswer,
    Column,
    ForeignKey,
    Plan,
    Schema,
    Table,
    identifier_words,
    singular,
)
from services.ai.validate import Verdict, clean, validate


@pytest.mark.parametrize(
    ("reply", "sql", "explanation"),
    [
        ('{"sql": "SELECT 1", "explanation": "one"}', "SELECT 1", "one"),
        ('Sure! {"sql": "SELECT 2", "explanation": "two"} Hope it helps.', "SELECT 2", "two"),
        ('```json\n{"sql": "SELECT 3", "explanation": "three"}\n```', "SELECT 3", "three"),
        ("Counts them:\n```sql\nSELECT COUNT(*) FROM t;\n```", "SELECT COUNT(*) FROM t;", "Counts them:"),
        ("SELECT 4", "SELECT 4", ""),
    ],
)
def test_model_replies_in_the_shapes_models_use(reply: str, sql: str, explanation: str) -> None:
    draft = parse_answer(reply)
    assert (draft.sql, draft.explanation) == (sql, explanation)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('{"sql": "", "explanation": "no such data"}', "no such data"),
        ("I am not able to help with that.", "I am not able to help with that."),
        ("", "the language model gave no statement"),
    ],
)
def test_a_declining_reply_is_cannot_answer(reply: str, reason: str) -> None:
    with pytest.raises(CannotAnswer) as err:
        parse_answer(reply)
    assert err.value.reason == reason


def test_suggestions_keep_only_items_with_sql() -> None:
    reply = '[{"sql": "SELECT 1", "explanation": "a"}, {"explanation": "no sql"}, "junk", {"sql": " "}]'
    assert [(d.sql, d.explanation) for d in parse_suggestions(reply)] == [("SELECT 1", "a")]
    assert parse_suggestions("no json here") == []


def test_clean_removes_fences_and_trailing_semicolons() -> None:
    assert clean("```sql\nSELECT 1;;\n```") == "SELECT 1"
    assert clean("  SELECT 'a;b' ; ") == "SELECT 'a;b'"


@pytest.mark.parametrize(
    ("word", "one"),
    [("customers", "customer"), ("categories", "category"), ("statuses", "status"), ("boxes", "box"),
     ("addresses", "address"), ("people", "person"), ("status", "status"), ("news", "news")],
)  # fmt: skip
def test_singular(word: str, one: str) -> None:
    assert singular(word) == one


def test_identifier_words_use_canonical_synonyms() -> None:
    assert identifier_words("customer_id") == ("customer", "id")
    assert identifier_words("createdAt") == ("created", "at")
    assert identifier_words("OrderItems") == ("order", "product")  # item means product
    assert identifier_words("unit_cost") == ("unit", "price")


def test_column_kinds_from_type_then_name() -> None:
    assert [
        Column(n, t).kind for n, t in [("price", "numeric(10,2)"), ("at", "timestamptz"), ("ok", "boolean")]
    ] == [
        "number",
        "time",
        "bool",
    ]
    assert Column("created_at", "TEXT").kind == "time" and Column("note", "").kind == "text"
    assert Column("updated_count", "integer").kind == "number"


def test_identifiers_are_quoted_only_when_needed_and_literals_escaped() -> None:
    assert [ident(n) for n in ("orders", "order", "Order Items", 'we"ird')] == [
        "orders",
        '"order"',
        '"Order Items"',
        '"we""ird"',
    ]
    assert [literal(v) for v in ("O'Brien", 3, 2.5, True)] == ["'O''Brien'", "3", "2.5", "TRUE"]


async def _no_values(table: str, columns: list[str], words: list[str]) -> list[tuple[str, str]]:
    return []


async def test_containing_without_a_column_uses_the_only_text_column() -> None:
    from services.ai.embedded import generate

    notes = Table("notes", (Column("id", "integer", primary_key=True), Column("body", "text")))
    draft = await generate("notes containing hello", Schema((notes,), "sqlite"), _no_values)
    assert "body" in draft.sql and "%hello%" in draft.sql
    two = Table("notes", (*notes.columns, Column("title", "text")))
    with pytest.raises(CannotAnswer) as err:
        await generate("notes containing hello", Schema((two,), "sqlite"), _no_values)
    assert "text columns: body, title" in err.value.reason


# --- The validator, with a stub dry run (the live tests plan on real databases) -------------------------


class _PlansEverything:
    """A database stub whose EXPLAIN accepts every statement as read-only: what is refused below is the
    validator's own doing."""

    async def schema(self) -> Schema:
        raise NotImplementedError

    async def explain(self, sql: str) -> Plan:
        return Plan("stub plan", read_only=True)

    async def find_values(self, table: str, columns: list[str], phrases: list[str]) -> list[tuple[str, str]]:
        return []


_SHOP = (
    Table("customers", (Column("id", "integer", primary_key=True), Column("name", "text"))),
    Table("OrderItems", (Column("orderId", "integer"), Column("Full Name", "text"))),
)


async def _verdict(sql: str, backend: str = "postgresql") -> Verdict:
    return await validate(sql, Schema(_SHOP, backend), _PlansEverything(), allow_writes=False)


@pytest.mark.parametrize(
    ("sql", "backend"),
    [
        ("SELECT * FROM tenant_b.customers", "postgresql"),
        ("SELECT * FROM public.customers", "postgresql"),
        ("SELECT * FROM db.tenant_b.customers", "postgresql"),
        ("WITH pg_namespace AS (SELECT 1) SELECT * FROM pg_catalog.pg_namespace", "postgresql"),
        ("WITH customers AS (SELECT 1) SELECT * FROM other.customers", "postgresql"),
        ("SELECT * FROM main.customers", "postgresql"),
        ("SELECT * FROM other.customers", "sqlite"),
    ],
)
async def test_tables_with_a_schema_part_are_refused(sql: str, backend: str) -> None:
    verdict = await _verdict(sql, backend)
    assert not verdict.ok and verdict.stage == "schema", verdict
    assert "without a schema" in verdict.reason


async def test_sqlites_main_schema_is_the_tenants_own() -> None:
    verdict = await _verdict("SELECT name FROM main.customers", "sqlite")
    assert verdict.ok and verdict.tables == ("customers",), verdict
    assert not (await _verdict("SELECT nope FROM main.customers", "sqlite")).ok


@pytest.mark.parametrize(
    "call",
    [
        "setval('s', 1)",
        "nextval('s')",
        "pg_catalog.setval('s', 1)",
        "pg_advisory_lock(1)",
        "pg_advisory_xact_lock_shared(1)",
        "pg_try_advisory_lock(1)",
        "lo_unlink(1)",
        "lo_from_bytea(0, 'x')",
        "lo_import('/etc/passwd')",
        "lo_export(1, '/tmp/x')",
        "txid_current()",
        "pg_notify('c', 'x')",
        "query_to_xml('DELETE FROM customers RETURNING 1', true, true, '')",
        "table_to_xml('customers', true, true, '')",
        "cursor_to_xml('c', 1, true, true, '')",
        "query_to_xmlschema('SELECT 1', true, true, '')",
        "dblink('x', 'SELECT 1')",
        "dblink_connect('x')",
        "pg_read_file('x')",
        "pg_read_binary_file('x')",
        "pg_ls_dir('.')",
        "set_config('role', 'x', false)",
        "\"setval\"('s', 1)",
    ],
)
async def test_functions_that_write_or_run_sql_are_refused(call: str) -> None:
    verdict = await _verdict(f"SELECT {call} FROM customers")
    assert not verdict.ok and verdict.refused and verdict.stage == "policy", verdict
    assert "is refused" in verdict.reason


async def test_ordinary_functions_pass() -> None:
    verdict = await _verdict("SELECT lower(name), COUNT(*), COALESCE(name, 'x') FROM customers GROUP BY name")
    assert verdict.ok, verdict


async def test_quoted_mixed_case_names_are_known_on_postgres() -> None:
    verdict = await _verdict('SELECT "orderId", "Full Name" FROM "OrderItems"')
    assert verdict.ok and verdict.tables == ("OrderItems",), verdict
    assert "unknown column" in (await _verdict('SELECT orderid FROM "OrderItems"')).reason
    assert (await _verdict("SELECT NAME FROM customers")).ok  # unquoted folds to lower case
    assert (await _verdict('SELECT "orderId" FROM OrderItems', "sqlite")).ok  # SQLite ignores case


async def test_a_table_without_columns_is_a_plain_refusal_not_a_crash() -> None:
    from services.ai.embedded import generate
    from services.ai.templates import table_templates

    empty = Table("tags", ())
    assert empty.label_column() is None
    with pytest.raises(CannotAnswer) as err:
        await generate("the last 2 tags", Schema((empty,), "sqlite"), _no_values)
    assert "tags has no columns" in err.value.reason
    notes = Table(
        "notes",
        (Column("id", "integer", True), Column("tag_id", "integer")),
        (ForeignKey(("tag_id",), "tags", ("id",)),),
    )
    drafts = table_templates(notes, Schema((notes, empty), "sqlite"))
    assert drafts and not [d for d in drafts if "JOIN" in d.sql]


# --- The embedded generator: parser and renderer meet only at the Query -------------------------------


_CUSTOMERS = Table(
    "customers", (Column("id", "integer", True), Column("name", "text"), Column("city", "text"))
)
_ORDERS = Table(
    "orders",
    (Column("id", "integer", True), Column("customer_id", "integer"), Column("total", "real")),
    (ForeignKey(("customer_id",), "customers", ("id",)),),
)


async def test_the_parser_describes_a_question_as_an_immutable_query() -> None:
    query = await parse(
        "total order amount per customer", Schema((_CUSTOMERS, _ORDERS), "sqlite"), _no_values
    )
    assert query.main == "orders" and query.aggs == (Agg("SUM", ("orders", "total"), "sum_total"),)
    assert query.groups == (Rows("customers", ("id",), "name"),)
    assert query.joins == (Join("orders", "customers", ("customer_id",), ("id",), False),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        query.limit = 3  # type: ignore[misc]


def test_the_renderer_needs_only_the_query() -> None:
    query = Query(
        main="customers",
        main_key=("id",),
        main_named=True,
        conds=(Cond(("customers", "city"), "IN", ("Berlin", "Paris")),),
        exists=(Exists("orders", (("id", "customer_id"),), negated=True),),
        order=(Order(("customers", "name"), desc=False),),
        limit=2,
    )
    assert render(query) == (
        "SELECT *\nFROM customers\nWHERE city IN ('Berlin', 'Paris') AND NOT EXISTS "
        "(SELECT 1 FROM orders WHERE orders.customer_id = customers.id)\nORDER BY name ASC NULLS LAST\nLIMIT 2"
    )
    assert explain(query) == (
        "Shows the rows of customers, where city IN ('Berlin', 'Paris') and no rows in orders refer to it, "
        "sorted by customers.name, lowest or oldest first, first 2 rows only."
    )
