"""The AI assistant through the edge: the real data and AI services (grpc, port 0) behind the real app, driven
over HTTP as the UI would: ask a question, then run the SQL it returned through /api/data/query."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ai.servicer import build as build_ai
from services.core.config import load_settings
from services.core.server import create_server, new_runtime
from services.core.tokens import TokenVerifier
from tests.edge.test_edge_app import edge_app
from tests.services.ai_support import CASES, SHOP, data_service, fake_openai, same_rows, sql_reply
from tests.support import AUDIENCE, ISSUER, TEST_KEYS, make_token


@dataclasses.dataclass
class Edge:
    client: httpx.AsyncClient

    @staticmethod
    def auth(role: str = "developer", tenant: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {make_token(sub=role, tenant=tenant, roles=(role,))}"}

    async def post(self, path: str, body: dict[str, Any], role: str = "developer") -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(role))

    async def rows(self, sql: str) -> list[list[Any]]:
        response = await self.post("/api/data/query", {"sql": sql})
        assert response.status_code == 200, response.text
        return response.json()["rows"]


@contextlib.asynccontextmanager
async def ai_edge(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    async with data_service() as data_address:
        monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", data_address)
        runtime = new_runtime(load_settings("ai"))
        runtime.keys = TEST_KEYS
        server, port = await create_server(runtime, await build_ai(runtime), port=0)
        app = edge_app(
            {"data": data_address, "ai": f"127.0.0.1:{port}"},
            verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE),
        )
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://edge"
            ) as client:
                edge = Edge(client)
                for statement in SHOP:
                    await edge.rows(statement)
                yield edge
        finally:
            await app.state.edge.backends.close()
            await server.stop(None)
            await runtime.close()


@pytest.fixture
async def edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    async with ai_edge(monkeypatch) as running:
        yield running


async def test_questions_through_the_edge_return_sql_that_runs_there(edge: Edge) -> None:
    for case in CASES:
        response = await edge.post("/api/ai/query", {"question": case.question})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["valid"] is True and answer["source"] == "embedded", answer
        expected = case.expect if isinstance(case.expect, list) else await edge.rows(case.expect)
        assert same_rows(await edge.rows(answer["sql"]), expected, case.ordered), case.question


async def test_the_seed_alias_and_the_suggest_routes(edge: Edge) -> None:
    answers = [
        (await edge.post(path, {"question": "customers in Berlin"})).json()
        for path in ("/query-ai", "/api/ai/query-ai")
    ]
    assert answers[0] == answers[1] and answers[0]["valid"] is True
    for path in ("/api/ai/sql/suggest", "/sql/suggest"):
        response = await edge.post(path, {"context": "SELECT * FROM pro", "limit": 3})
        assert response.status_code == 200, response.text
        suggestions = response.json()["suggestions"]
        assert suggestions[0] == {
            "sql": "SELECT * FROM products",
            "explanation": "Completes 'pro' to products.",
            "source": "embedded",
        }
        assert 1 <= len(suggestions) <= 3


async def test_cannot_answer_is_a_200_with_the_reason(edge: Edge) -> None:
    response = await edge.post("/api/ai/query", {"question": "'; DROP TABLE customers; --"})
    assert response.status_code == 200, response.text  # free text: the WAF leaves the question alone
    body = response.json()
    assert body["valid"] is False and body["sql"] == "" and body["reason"].startswith("cannot answer")
    assert await edge.rows("SELECT COUNT(*) FROM customers") == [[5]]


async def test_errors_use_the_error_shape_and_status(edge: Edge) -> None:
    empty = await edge.post("/api/ai/query", {"question": ""})
    assert empty.status_code == 400 and empty.json()["code"] == 3 and "question" in empty.json()["message"]
    viewer = await edge.post(
        "/api/ai/query", {"question": "count orders", "allow_writes": True}, role="viewer"
    )
    assert viewer.status_code == 403
    missing = await edge.post("/api/ai/sql/suggest", {"table": "nope"})
    assert missing.status_code == 404
    anonymous = await edge.client.post("/api/ai/query", json={"question": "count orders"})
    assert anonymous.status_code == 401


async def test_a_model_timeout_is_504_not_500(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_openai(lambda body: sql_reply("SELECT 1"), delay_s=5) as fake:
        monkeypatch.setenv("OPENAI_KEY", "sk-edge-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("LAUNCHPAD_AI_TIMEOUT_MS", "500")
        async with ai_edge(monkeypatch) as edge:
            response = await edge.post("/api/ai/query", {"question": "count orders"})
    assert response.status_code == 504, response.text
    body = response.json()
    assert body["code"] == 4 and "language model did not answer" in body["message"]
    assert "sk-edge-test" not in response.text
