"""Pure parts of the AI service: reading a model's reply, cleaning SQL, words of names, identifier quoting."""

from __future__ import annotations

import pytest

from services.ai.llm import parse_answer, parse_suggestions
from services.ai.render import ident, literal
from services.ai.schema import CannotAnswer, Column, identifier_words, singular
from services.ai.validate import clean


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
    from services.ai.schema import Schema, Table

    notes = Table("notes", (Column("id", "integer", primary_key=True), Column("body", "text")))
    draft = await generate("notes containing hello", Schema((notes,), "sqlite"), _no_values)
    assert "body" in draft.sql and "%hello%" in draft.sql
    two = Table("notes", (*notes.columns, Column("title", "text")))
    with pytest.raises(CannotAnswer) as err:
        await generate("notes containing hello", Schema((two,), "sqlite"), _no_values)
    assert "text columns: body, title" in err.value.reason
