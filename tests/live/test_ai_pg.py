"""The AI assistant against real PostgreSQL: the same questions as on SQLite, now validated in the PostgreSQL
dialect and dry-run with PostgreSQL's EXPLAIN, must return the same rows; a second tenant's tables stay out
of the first tenant's answers and out of the language model's prompt.

A private database per module (dropped afterwards, with the tenants' databases and roles), SIMULATION_MODE=false.
Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1 (then it fails).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from launchpad.ai.v1 import ai_pb2, ai_pb2_grpc
from services.ai.servicer import build
from tests.conftest import LIVE_ENV
from tests.live.test_data_pg import LiveDb, admin
from tests.services.ai_support import (
    CASES,
    OTHER,
    OTHER_NAMES,
    SHOP,
    UNANSWERABLE,
    Tenant,
    data_service,
    fake_openai,
    rows,
    same_rows,
    sql_reply,
)
from tests.support import need_env, running_service

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live_db() -> Iterator[LiveDb]:
    server = LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN")
    name = f"lp_ai_test_{uuid.uuid4().hex[:10]}"
    admin(server, f'CREATE DATABASE "{name}"')
    db = LiveDb(server, name)
    try:
        yield db
    finally:
        db.drop()


@dataclasses.dataclass
class Ai:
    stub: ai_pb2_grpc.AiServiceStub
    shop: Tenant
    other: Tenant

    async def ask(self, question: str, tenant: Tenant | None = None) -> ai_pb2.QueryAiResponse:
        request = ai_pb2.QueryAiRequest(question=question)
        return await self.stub.QueryAi(request, metadata=(tenant or self.shop).md)


@pytest.fixture
async def ai(live_db: LiveDb, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ai]:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with data_service() as data_address:
        monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", data_address)
        async with running_service("ai", build) as (_runtime, channel):
            data_channel = grpc.aio.insecure_channel(data_address)
            shop, other = Tenant(data_channel, live_db.tenant()), Tenant(data_channel, live_db.tenant())
            await shop.load(SHOP)
            await other.load(OTHER)
            try:
                yield Ai(ai_pb2_grpc.AiServiceStub(channel), shop, other)
            finally:
                await data_channel.close()


async def test_every_question_gives_the_same_rows_on_postgres(ai: Ai) -> None:
    failures: list[str] = []
    for case in CASES:
        answer = await ai.ask(case.question)
        if not answer.valid:
            failures.append(f"{case.question!r}: {answer.reason}")
            continue
        got = rows(await ai.shop.run(answer.sql))
        expected = case.expect if isinstance(case.expect, list) else rows(await ai.shop.run(case.expect))
        if not same_rows(got, expected, case.ordered):
            failures.append(f"{case.question!r}: {answer.sql}\n  {got}\n  != {expected}")
    assert not failures, "\n".join(failures)


async def test_unanswerable_and_other_tenants_on_postgres(ai: Ai) -> None:
    for question in [*UNANSWERABLE, "show the payroll", "employee names"]:
        answer = await ai.ask(question)
        assert not answer.valid and answer.reason.startswith("cannot answer"), (question, answer.reason)
        text = f"{answer.sql} {answer.explanation} {answer.reason}"
        assert not any(name in text for name in OTHER_NAMES if name.lower() not in question)
    own = await ai.ask("average salary", tenant=ai.other)
    assert own.valid and rows(await ai.other.run(own.sql)) == [[8000.0]]


async def test_the_model_is_told_postgresql_and_only_the_callers_tables(
    live_db: LiveDb, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    monkeypatch.setenv("OPENAI_KEY", "sk-live-pg-test")
    reply = sql_reply(
        "SELECT date_trunc('month', ordered_at) AS month, count(*) FROM orders GROUP BY 1 ORDER BY 1"
    )
    with fake_openai(lambda body: reply) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        async with data_service() as data_address:
            monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", data_address)
            async with running_service("ai", build) as (_runtime, channel):
                data_channel = grpc.aio.insecure_channel(data_address)
                shop, other = Tenant(data_channel, live_db.tenant()), Tenant(data_channel, live_db.tenant())
                await shop.load(SHOP)
                await other.load(OTHER)
                answer: Any = await ai_pb2_grpc.AiServiceStub(channel).QueryAi(
                    ai_pb2.QueryAiRequest(question="orders per month"), metadata=shop.md
                )
                month_rows = rows(await shop.run(answer.sql))
                await data_channel.close()
    assert answer.valid and answer.source == "llm" and len(month_rows) == 4  # a PostgreSQL-only function
    prompt = fake.prompt()
    assert "PostgreSQL" in prompt and "CREATE TABLE orders" in prompt and "timestamp" in prompt
    assert "payroll" not in prompt and "secret_projects" not in prompt
