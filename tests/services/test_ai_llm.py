"""The language-model path against a local fake of the OpenAI chat completions API (no real model is
installable here): the tenant's schema is in the prompt, every generated statement is validated, a
generated DROP TABLE is refused, invalid SQL gets one repair, timeouts and upstream errors are clear
statuses, and the key never appears anywhere but the Authorization header."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from launchpad.ai.v1 import ai_pb2
from launchpad.api.v1 import status_pb2, status_pb2_grpc
from services.ai.llm import LlmClient
from services.core.errors import DeadlineExceeded, Unavailable
from services.core.server import Runtime
from tests.services.ai_support import AiStack, Reply, ai_stack, completion, fails, rows, sql_reply

KEY = "sk-test-7f3c9a51d2e84b60"


@pytest.fixture
def llm_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("OPENAI_KEY", KEY)
    monkeypatch.setenv("OPENAI_MODEL", "fake-model")
    monkeypatch.setenv("LAUNCHPAD_AI_TIMEOUT_MS", "2000")
    return monkeypatch


@contextlib.asynccontextmanager
async def started(env: pytest.MonkeyPatch, *replies: Reply, delay_s: float = 0.0) -> AsyncIterator[AiStack]:
    """The fake model (answering `replies` in turn, the last one repeating), the data service with the shop
    tenant and another tenant loaded, and the AI service in front of both."""
    # each start gets its own data dir (a test may start several): tmp_path/data-*
    env.setenv(
        "LAUNCHPAD_DATA_DIR",
        tempfile.mkdtemp(prefix="data-", dir=Path(os.environ["LAUNCHPAD_LOG_DIR"]).parent),
    )
    async with ai_stack(env, *replies, delay_s=delay_s) as ai:
        yield ai


async def test_the_prompt_holds_the_callers_schema_and_the_sql_is_validated(llm_env: Any) -> None:
    reply = sql_reply("SELECT name FROM customers WHERE city = 'Berlin' ORDER BY name", "Berlin customers.")
    async with started(llm_env, lambda body: reply) as ai:
        answer = await ai.ask("who lives in Berlin?")
        assert (answer.valid, answer.source, answer.explanation) == (True, "llm", "Berlin customers.")
        assert list(answer.tables) == ["customers"]
        assert rows(await ai.shop.run(answer.sql)) == [["Alice"], ["Carol"]]
    [chat] = ai.fake.chats
    assert chat["model"] == "fake-model" and chat["messages"][-1] == {
        "role": "user",
        "content": "who lives in Berlin?",
    }
    prompt = ai.fake.prompt()
    assert "SQLite" in prompt and "CREATE TABLE orders" in prompt
    assert "customer_id integer" in prompt.lower() and "REFERENCES customers (id)" in prompt
    assert "payroll" not in prompt and "secret_projects" not in prompt  # another tenant's tables
    assert ai.fake.headers[0]["Authorization"] == f"Bearer {KEY}"


async def test_a_generated_drop_table_is_refused_and_never_run(llm_env: Any) -> None:
    async with started(llm_env, lambda body: sql_reply("DROP TABLE customers")) as ai:
        answer = await ai.ask("clean up the customers")
        assert not answer.valid and answer.sql == ""  # refused statements are not handed back
        assert answer.reason.startswith("refused: DROP TABLE statements are refused")
        assert rows(await ai.shop.run("SELECT COUNT(*) FROM customers")) == [[5]]
    assert len(ai.fake.chats) == 2  # one chance to correct it, told why
    assert "DROP TABLE statements are refused" in ai.fake.prompt(1)


async def test_writes_need_allow_writes(llm_env: Any) -> None:
    delete = sql_reply("DELETE FROM orders WHERE status = 'cancelled'")
    async with started(llm_env, lambda body: delete) as ai:
        refused = await ai.ask("remove cancelled orders")
        allowed = await ai.ask("remove cancelled orders", allow_writes=True)
        assert rows(await ai.shop.run("SELECT COUNT(*) FROM orders")) == [[8]]  # validated, never run
    assert not refused.valid and "writes were not asked for" in refused.reason
    assert allowed.valid and allowed.sql.startswith("DELETE")
    assert "never INSERT" in ai.fake.prompt(0) and "You may write INSERT" in ai.fake.prompt(2)


async def test_invalid_sql_is_repaired_once(llm_env: Any) -> None:
    replies = [
        lambda b: sql_reply("SELECT nme FROM customers"),
        lambda b: sql_reply("SELECT name FROM customers"),
    ]
    async with started(llm_env, *replies) as ai:
        answer = await ai.ask("customer names")
    assert (answer.valid, answer.repaired, answer.sql) == (True, True, "SELECT name FROM customers")
    assert "Column 'nme' could not be resolved" in ai.fake.prompt(1)


async def test_sql_still_invalid_after_the_repair_is_returned_as_invalid(llm_env: Any) -> None:
    async with started(llm_env, lambda body: sql_reply("SELECT * FROM invoices")) as ai:
        answer = await ai.ask("show invoices")
    assert not answer.valid and not answer.repaired
    assert answer.sql == "SELECT * FROM invoices" and "unknown table invoices" in answer.reason
    assert answer.reason.startswith("invalid: ")


async def test_the_database_dry_run_catches_what_the_parser_cannot(llm_env: Any) -> None:
    bad = sql_reply("SELECT name FROM customers WHERE no_such_function(name) = 1")
    async with started(llm_env, lambda body: bad) as ai:
        answer = await ai.ask("odd question")
    assert not answer.valid and "the database refused to plan it" in answer.reason


async def test_a_model_that_declines_is_a_plain_cannot_answer(llm_env: Any) -> None:
    declines = sql_reply("", "There is no weather data in this schema.")
    async with started(llm_env, lambda body: declines) as ai:
        answer = await ai.ask("what is the weather")
    assert not answer.valid and answer.reason == "cannot answer: There is no weather data in this schema."


async def test_sql_in_a_code_block_is_accepted(llm_env: Any) -> None:
    fenced = completion("Here you go:\n```sql\nSELECT COUNT(*) FROM orders;\n```")
    async with started(llm_env, lambda body: fenced) as ai:
        answer = await ai.ask("how many orders")
        assert answer.valid and answer.sql == "SELECT COUNT(*) FROM orders"
        assert rows(await ai.shop.run(answer.sql)) == [[8]]


async def test_a_timeout_is_deadline_exceeded_after_one_retry(llm_env: Any) -> None:
    llm_env.setenv("LAUNCHPAD_AI_TIMEOUT_MS", "500")
    async with started(llm_env, lambda body: sql_reply("SELECT 1"), delay_s=5) as ai:
        code, message = await fails(ai.ask("count orders"))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not answer within 0.5 s" in message and KEY not in message
    assert len(ai.fake.chats) == 2


async def test_upstream_errors_are_retried_once_then_clear(llm_env: Any) -> None:
    replies = [lambda b: (500, {"error": {"message": f"boom {KEY}"}}), lambda b: sql_reply("SELECT 1 AS one")]
    async with started(llm_env, *replies) as ai:
        assert (await ai.ask("one")).valid  # the retry succeeded
    async with started(llm_env, lambda b: (503, {"error": {"message": "overloaded"}})) as ai:
        code, message = await fails(ai.ask("one"))
    assert code == grpc.StatusCode.UNAVAILABLE and "HTTP 503" in message and len(ai.fake.chats) == 2
    async with started(llm_env, lambda b: (401, {"error": {"message": f"Incorrect API key {KEY}"}})) as ai:
        code, message = await fails(ai.ask("one"))
    assert code == grpc.StatusCode.UNAVAILABLE and "OPENAI_KEY" in message and KEY not in message
    assert len(ai.fake.chats) == 1  # a refused key is not retried
    async with started(llm_env, lambda b: (429, {"error": {"message": "slow down"}})) as ai:
        code, _ = await fails(ai.ask("one"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_suggestions_from_the_model_are_validated_one_by_one(llm_env: Any) -> None:
    content = (
        '[{"sql": "SELECT * FROM orders ORDER BY ordered_at DESC LIMIT 5", "explanation": "newest"},'
        ' {"sql": "DROP TABLE orders", "explanation": "bad"},'
        ' {"sql": "SELECT missing_column FROM orders", "explanation": "wrong"},'
        ' {"sql": "SELECT status, COUNT(*) FROM orders GROUP BY status", "explanation": "per status"}]'
    )
    async with started(llm_env, lambda body: completion(content)) as ai:
        request = ai_pb2.SuggestSqlRequest(context="orders", table="orders")
        response = await ai.stub.SuggestSql(request, metadata=ai.shop.md)
    assert [(s.explanation, s.source) for s in response.suggestions] == [
        ("newest", "llm"),
        ("per status", "llm"),
    ]
    assert "The user is looking at the table orders" in ai.fake.prompt()


async def test_the_key_is_never_logged_returned_or_reported(llm_env: Any, settings_env: Path) -> None:
    replies = [lambda b: sql_reply("DROP TABLE orders"), lambda b: (500, {"error": {"message": KEY}})]
    async with started(llm_env, *replies) as ai:
        answer = await ai.ask("drop it")
        status = await status_pb2_grpc.StatusServiceStub(ai.channel).GetStatus(
            status_pb2.GetStatusRequest(), metadata=ai.shop.md
        )
    [llm] = [d for d in status.dependencies if d.name == "llm"]
    assert (llm.mode, llm.target, llm.healthy) == ("live", ai.fake.url, True)
    assert KEY not in str(answer) and KEY not in str(status)
    files = [p for p in settings_env.parent.rglob("*") if p.is_file()]
    assert any(p.name == "audit.log" for p in files) and any(
        p.suffix == ".log" and "ai" in p.name for p in files
    )
    assert not [p for p in files if KEY.encode() in p.read_bytes()]


@contextlib.asynccontextmanager
async def model_down(
    env: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Runtime, ai_pb2.QueryAiResponse | grpc.StatusCode]]:
    """The AI service configured for a model nobody serves; yields its runtime and one question's outcome."""
    env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # discard port: nothing answers
    async with ai_stack(env) as ai:
        outcome: ai_pb2.QueryAiResponse | grpc.StatusCode
        try:
            outcome = await ai.ask("count the orders")
        except grpc.aio.AioRpcError as exc:
            assert "language model" in (exc.details() or "")
            outcome = exc.code()
        yield ai.runtime, outcome


async def test_an_unreachable_model_falls_back_to_the_embedded_generator(llm_env: Any) -> None:
    async with model_down(llm_env) as (runtime, answer):
        [llm] = runtime.deps.all()
    assert llm.mode == "fallback" and "OPENAI_KEY" in llm.remediation
    assert isinstance(answer, ai_pb2.QueryAiResponse) and answer.valid and answer.source == "embedded"


async def test_simulation_false_with_the_model_down_is_not_serving(llm_env: Any) -> None:
    llm_env.setenv("SIMULATION_MODE", "false")
    async with model_down(llm_env) as (runtime, outcome):
        [llm] = runtime.deps.all()
        assert (llm.mode, llm.healthy, runtime.deps.serving()) == ("live", False, False)
    assert outcome == grpc.StatusCode.UNAVAILABLE  # never silently answered by the embedded generator


# --- The client alone, over httpx.MockTransport: what the fake server cannot easily produce --------------


def _client(handler: Any, base_url: str = "http://127.0.0.1:9/v1", timeout_s: float = 2.0) -> LlmClient:
    return LlmClient(base_url, KEY, "fake-model", timeout_s, transport=httpx.MockTransport(handler))


_ASK = [{"role": "user", "content": "one"}]


async def test_an_unreadable_answer_is_unavailable_not_internal() -> None:
    def broken_gzip(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    client = _client(broken_gzip)
    with pytest.raises(Unavailable) as err:
        await client.complete(_ASK)
    await client.close()
    assert "could not be read (DecodingError)" in str(err.value)


async def test_the_whole_exchange_is_bounded_by_the_timeout() -> None:
    calls = 0

    async def stalls(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)  # no httpx timeout applies inside a transport: only the overall bound
        raise AssertionError("unreachable")

    client = _client(stalls, timeout_s=0.2)
    # the outer 60 s only turns a regression into a failure instead of an hour's hang
    with pytest.raises(DeadlineExceeded) as err:
        async with asyncio.timeout(60):
            await client.complete(_ASK)
    await client.close()
    assert "did not answer within 0.2 s" in str(err.value) and calls == 2


async def test_credentials_in_the_base_url_stay_out_of_messages_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = _client(refused, base_url="http://proxyuser:hunter2secret@127.0.0.1:9/v1")
    with caplog.at_level(logging.INFO), pytest.raises(Unavailable) as err:
        await client.complete(_ASK)
    await client.close()
    assert "127.0.0.1:9/v1" in str(err.value) and "hunter2secret" not in str(err.value)
    answered: list[httpx.Request] = []

    def answers(request: httpx.Request) -> httpx.Response:
        answered.append(request)
        return httpx.Response(200, json=completion("SELECT 1")[1])

    client = _client(answers, base_url="http://proxyuser:hunter2secret@127.0.0.1:9/v1")
    with caplog.at_level(logging.INFO):
        assert await client.complete(_ASK) == "SELECT 1"
    await client.close()
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "127.0.0.1:9/v1" in logged and "hunter2secret" not in logged  # httpx logs each request's URL
    assert answered[0].headers["Authorization"].startswith("Basic ")  # the userinfo still authenticates


async def test_a_refused_key_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    client = _client(lambda request: httpx.Response(401, json={"error": {"message": f"bad key {KEY}"}}))
    with caplog.at_level(logging.INFO, logger="launchpad.ai"), pytest.raises(Unavailable):
        await client.complete(_ASK)
    await client.close()
    assert [getattr(r, "status", None) for r in caplog.records if r.name == "launchpad.ai"] == [401]
    assert KEY not in " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
