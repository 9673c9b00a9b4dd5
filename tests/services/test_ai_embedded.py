"""The AI service on a real grpc.aio server with the embedded generator, in front of a real data service
(SQLite): questions over a shop schema become SQL that the data service runs and that returns the expected
rows; what cannot be answered says so; one tenant's schema never reaches another tenant's answers.

tests/services/test_ai_llm.py covers the language-model path; tests/edge/test_ai_edge.py the REST routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import orjson
import pytest
from prometheus_client import REGISTRY

from launchpad.ai.v1 import ai_pb2, ai_pb2_grpc
from launchpad.api.v1 import status_pb2, status_pb2_grpc
from services.ai.servicer import build
from tests.services.ai_support import (
    CASES,
    UNANSWERABLE,
    AiStack,
    Case,
    ai_stack,
    answer_case,
    fails,
    leaked,
    rows,
)
from tests.support import make_token, metadata, running_service


@pytest.fixture
async def ai(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AiStack]:
    async with ai_stack(monkeypatch) as running:
        yield running


def test_the_cases_cover_every_intent_with_at_least_20_questions() -> None:
    intents = {part for case in CASES for part in case.intent.replace(" ", "+").split("+")}
    assert {"list", "count", "filter", "top", "order", "group", "latest", "oldest", "join"} <= intents
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.question for c in CASES])
async def test_questions_become_valid_sql_returning_the_expected_rows(ai: AiStack, case: Case) -> None:
    answer, wrong = await answer_case(ai, case)
    assert not wrong, wrong
    assert (answer.source, answer.reason, answer.repaired) == ("embedded", "", False)
    assert answer.sql and answer.explanation
    assert set(answer.tables) <= {"customers", "orders", "products"} and answer.tables


@pytest.mark.parametrize("question", UNANSWERABLE)
async def test_unanswerable_questions_say_so_plainly(ai: AiStack, question: str) -> None:
    answer = await ai.ask(question)
    assert not answer.valid and answer.sql == "" and not answer.tables
    assert answer.reason.startswith("cannot answer: "), answer.reason
    assert answer.explanation.lower().startswith("cannot answer")


async def test_the_reason_names_what_was_not_understood(ai: AiStack) -> None:
    hat = await ai.ask("show customers with a purple hat")
    assert "'purple'" in hat.reason and "'hat'" in hat.reason
    invoices = await ai.ask("show all invoices")
    assert (
        "customers, orders, products" in invoices.reason or "customers, products, orders" in invoices.reason
    )
    writes = await ai.ask("delete all customers", allow_writes=True)
    assert not writes.valid and "SELECT statements only" in writes.reason
    assert rows(await ai.shop.run("SELECT COUNT(*) FROM customers")) == [[5]]


async def test_ambiguous_columns_are_not_guessed(ai: AiStack) -> None:
    answer = await ai.ask("show orders with name Laptop")  # customers.name or products.name?
    assert not answer.valid and "customers or products" in answer.reason


async def test_a_tenant_never_sees_another_tenants_schema(ai: AiStack) -> None:
    for question in ("show the payroll", "show all salaries", "list secret projects", "employee names"):
        answer = await ai.ask(question)
        assert not answer.valid and answer.reason.startswith("cannot answer")
        assert not leaked(answer, question), answer
    # the other tenant has its own schema, and the shop's tables do not exist for it
    own = await ai.ask("average salary", tenant=ai.other)
    assert own.valid and list(own.tables) == ["payroll"]
    assert rows(await ai.other.run(own.sql)) == [[8000.0]]
    shop = await ai.ask("show all customers", tenant=ai.other)
    assert not shop.valid and "customers" not in shop.reason.split("(your tables:")[1]
    # suggestions complete names from the caller's own schema only
    suggested = await ai.suggest(context="SELECT * FROM pay")
    assert not any("payroll" in s.sql for s in suggested.suggestions)
    theirs = await ai.suggest(ai.other, context="SELECT * FROM pay")
    assert "SELECT * FROM payroll" in [s.sql for s in theirs.suggestions]


async def test_values_are_matched_ignoring_case_and_returned_as_stored(ai: AiStack) -> None:
    answer = await ai.ask("customers whose city is PARIS")
    assert answer.valid and "'Paris'" in answer.sql


async def test_suggestions_for_a_table_are_valid_and_run(ai: AiStack) -> None:
    response = await ai.suggest(table="orders", limit=10)
    suggestions = list(response.suggestions)
    assert len(suggestions) >= 4
    assert all(s.source == "embedded" and s.explanation for s in suggestions)
    assert any("JOIN customers" in s.sql for s in suggestions)
    assert any("GROUP BY status" in s.sql for s in suggestions)
    for suggestion in suggestions:
        await ai.shop.run(suggestion.sql)  # every suggestion runs
    assert len((await ai.suggest(table="orders", limit=2)).suggestions) == 2


async def test_suggestions_complete_sql_being_typed_and_answer_questions(ai: AiStack) -> None:
    typed = await ai.suggest(context="SELECT * FROM cu")
    assert typed.suggestions[0].sql == "SELECT * FROM customers"
    column = await ai.suggest(context="SELECT na")
    assert not any(s.sql.startswith("SELECT na") for s in column.suggestions)  # no FROM yet: not valid SQL
    question = await ai.suggest(context="customers in Berlin")
    assert question.suggestions[0].sql.endswith("WHERE city = 'Berlin'")


async def test_bad_requests_are_clear_errors(ai: AiStack) -> None:
    assert (await fails(ai.ask("   ")))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = await fails(ai.ask("x" * 5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "question" in message
    code, message = await fails(ai.suggest(table="nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in message
    assert (await fails(ai.suggest(limit=-1)))[0] == grpc.StatusCode.INVALID_ARGUMENT


async def test_viewers_may_ask_but_not_for_writes(ai: AiStack) -> None:
    viewer = metadata(make_token(sub="v", tenant="acme", roles=("viewer",)))
    answer = await ai.stub.QueryAi(ai_pb2.QueryAiRequest(question="count the orders"), metadata=viewer)
    assert answer.valid
    writes = ai_pb2.QueryAiRequest(question="count the orders", allow_writes=True)
    code, message = await fails(ai.stub.QueryAi(writes, metadata=viewer))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "allow_writes" in message


async def test_calls_are_audited_with_the_sql_hash_and_the_data_calls_carry_the_caller(
    ai: AiStack, settings_env: Path
) -> None:
    request = ai_pb2.QueryAiRequest(question="orders of Alice")
    await ai.stub.QueryAi(request, metadata=metadata(ai.shop.token, request_id="ai-audit-1"))
    events = [orjson.loads(line) for line in (settings_env / "audit.log").read_bytes().splitlines()]
    mine = [e for e in events if e["request_id"] == "ai-audit-1"]
    [query] = [e for e in mine if e["action"].endswith("AiService/QueryAi")]
    assert (query["actor"], query["tenant"], query["outcome"], query["ai_source"]) == (
        "developer-acme",
        "acme",
        "ok",
        "embedded",
    )
    assert len(query["sql_sha256"]) == 64 and query["valid"] is True
    data_calls = [e for e in mine if e["service"] == "data"]
    assert {e["action"].rsplit("/", 1)[1] for e in data_calls} >= {"ListTables", "Explain", "Query"}
    assert all(e["actor"] == "developer-acme" and e["tenant"] == "acme" for e in data_calls)


async def test_metrics_count_requests_by_source(ai: AiStack) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("launchpad_ai_requests_total", rpc="QueryAi", source="embedded")
    unanswered = sample("launchpad_ai_cannot_answer_total", source="embedded")
    await ai.ask("count the orders")
    await ai.ask("what is the weather")
    assert sample("launchpad_ai_requests_total", rpc="QueryAi", source="embedded") == before + 2
    assert sample("launchpad_ai_cannot_answer_total", source="embedded") == unanswered + 1


async def test_status_reports_the_embedded_generator(ai: AiStack) -> None:
    status = await status_pb2_grpc.StatusServiceStub(ai.channel).GetStatus(
        status_pb2.GetStatusRequest(), metadata=ai.shop.md
    )
    [llm] = [d for d in status.dependencies if d.name == "llm"]
    assert (llm.mode, llm.healthy) == ("embedded", True) and "OPENAI_KEY" in llm.remediation


async def test_the_data_service_down_is_unavailable(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", "127.0.0.1:9")  # discard port: nothing answers
    async with running_service("ai", build) as (_runtime, channel):
        stub = ai_pb2_grpc.AiServiceStub(channel)
        code, message = await fails(
            stub.QueryAi(ai_pb2.QueryAiRequest(question="count orders"), metadata=metadata(make_token()))
        )
    assert code == grpc.StatusCode.UNAVAILABLE and "data service" in message
