"""The AI assistant against real PostgreSQL: the same questions as on SQLite, now validated in the PostgreSQL
dialect and dry-run with PostgreSQL's EXPLAIN, must return the same rows; a second tenant's tables stay out
of the first tenant's answers and out of the language model's prompt.

A private database per module (dropped afterwards, with the tenants' databases and roles), SIMULATION_MODE=false.
Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LIVE_ENV
from tests.live.test_data_pg import LiveDb
from tests.services.ai_support import (
    CASES,
    UNANSWERABLE,
    AiStack,
    ai_stack,
    answer_case,
    leaked,
    rows,
    sql_reply,
)
from tests.support import need_env

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live_db() -> Iterator[LiveDb]:
    db = LiveDb(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_ai_test")
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def pg_env(live_db: LiveDb, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The data service on the module's database, nothing falling back to SQLite."""
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    return monkeypatch


@pytest.fixture
async def ai(live_db: LiveDb, pg_env: pytest.MonkeyPatch) -> AsyncIterator[AiStack]:
    async with ai_stack(pg_env, tenants=(live_db.tenant(), live_db.tenant())) as running:
        yield running


async def test_every_question_gives_the_same_rows_on_postgres(ai: AiStack) -> None:
    failures: list[str] = []
    for case in CASES:
        _, wrong = await answer_case(ai, case)
        if wrong:
            failures.append(wrong)
    assert not failures, "\n".join(failures)


async def test_unanswerable_and_other_tenants_on_postgres(ai: AiStack) -> None:
    for question in [*UNANSWERABLE, "show the payroll", "employee names"]:
        answer = await ai.ask(question)
        assert not answer.valid and answer.reason.startswith("cannot answer"), (question, answer.reason)
        assert not leaked(answer, question), answer
    own = await ai.ask("average salary", tenant=ai.other)
    assert own.valid and rows(await ai.other.run(own.sql)) == [[8000.0]]


async def test_the_model_is_told_postgresql_and_only_the_callers_tables(
    live_db: LiveDb, pg_env: pytest.MonkeyPatch
) -> None:
    pg_env.setenv("OPENAI_KEY", "sk-live-pg-test")
    reply = sql_reply(
        "SELECT date_trunc('month', ordered_at) AS month, count(*) FROM orders GROUP BY 1 ORDER BY 1"
    )
    async with ai_stack(pg_env, lambda body: reply, tenants=(live_db.tenant(), live_db.tenant())) as ai:
        answer = await ai.ask("orders per month")
        month_rows = rows(await ai.shop.run(answer.sql))
    assert answer.valid and answer.source == "llm" and len(month_rows) == 4  # a PostgreSQL-only function
    prompt = ai.fake.prompt()
    assert "PostgreSQL" in prompt and "CREATE TABLE orders" in prompt and "timestamp" in prompt
    assert "payroll" not in prompt and "secret_projects" not in prompt


async def test_postgres_quoted_names_pass_and_other_schemas_are_refused(
    live_db: LiveDb, pg_env: pytest.MonkeyPatch
) -> None:
    pg_env.setenv("OPENAI_KEY", "sk-live-pg-test")
    statements = {
        "camel": 'SELECT "orderId", "Full Name" FROM "OrderItems" ORDER BY "orderId"',
        "catalog": "WITH pg_namespace AS (SELECT 1) SELECT * FROM pg_catalog.pg_namespace",
        "other schema": "SELECT * FROM public.customers",
    }

    def reply(body: dict[str, Any]) -> tuple[int, Any]:
        asked = next(m["content"] for m in body["messages"] if m["role"] == "user")
        return sql_reply(statements[asked])

    async with ai_stack(pg_env, reply, tenants=(live_db.tenant(), live_db.tenant())) as ai:
        await ai.shop.load(
            [
                'CREATE TABLE "OrderItems" ("orderId" integer, "Full Name" text)',
                """INSERT INTO "OrderItems" VALUES (2, 'Bob B'), (1, 'Ann A')""",
            ]
        )
        camel = await ai.ask("camel")
        assert camel.valid and list(camel.tables) == ["OrderItems"], camel.reason
        assert rows(await ai.shop.run(camel.sql)) == [[1, "Ann A"], [2, "Bob B"]]
        for question in ("catalog", "other schema"):
            answer = await ai.ask(question)
            assert not answer.valid and "without a schema" in answer.reason, (question, answer.reason)
