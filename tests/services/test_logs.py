"""The logs service on a real grpc.aio server: embedded (the services' JSON log files) and live against a
local fake Loki that serves Loki's documented query_range JSON (no Loki server is installable here)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import orjson
import pytest
from websockets.asyncio.server import serve

from launchpad.logs.v1 import logs_pb2, logs_pb2_grpc
from services.core.context import CallContext, Principal, bind_call, reset_call
from services.logs.servicer import build
from tests.services.fakehttp import fake_http
from tests.support import make_token, metadata, running_service

ACME = metadata(make_token(tenant="acme", roles=("viewer",)))
GLOBEX = metadata(make_token(tenant="globex", roles=("developer",)))
PLATFORM = metadata(make_token(sub="root", tenant="default", roles=("admin",)))


def log_in_call(message: str, tenant: str, request_id: str, level: int = logging.INFO) -> None:
    """Logs one line the way a service does while serving a call (the kit's JSON formatter)."""
    token = bind_call(CallContext(request_id, "/test/Call", Principal("u", tenant, ("developer",))))
    try:
        logging.getLogger("launchpad.data").log(level, message)
    finally:
        reset_call(token)


@pytest.fixture
async def logs(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.delenv("LOKI_URL", raising=False)
    async with running_service("logs", build) as (_runtime, channel):
        yield logs_pb2_grpc.LogsServiceStub(channel)


async def query(stub: Any, md: Any, **fields: Any) -> logs_pb2.QueryResponse:
    return await stub.Query(logs_pb2.QueryRequest(**fields), metadata=md)


async def test_query_finds_the_line_a_request_produced_by_request_id(logs: Any) -> None:
    rid = f"req-{uuid.uuid4().hex}"
    log_in_call("charged the card", "acme", rid, logging.ERROR)
    log_in_call("unrelated", "acme", "req-other")
    found = await query(logs, ACME, query=f'{{request_id="{rid}"}}')
    assert found.mode == "embedded"
    [entry] = found.entries
    assert (entry.request_id, entry.message, entry.level) == (rid, "charged the card", "error")
    assert entry.labels["tenant"] == "acme" and entry.labels["service"] == "logs"
    assert abs(entry.timestamp.ToNanoseconds() - time.time_ns()) < 10 * 10**9


async def test_filters_level_direction_and_limit(logs: Any) -> None:
    for i in range(5):
        log_in_call(f"step {i} ok", "acme", f"r{i}")
    log_in_call("step 9 failed", "acme", "r9", logging.WARNING)
    newest = await query(logs, ACME, query='{service="logs"} |= "step" != "failed"', limit=2)
    assert [e.message for e in newest.entries] == ["step 4 ok", "step 3 ok"]
    oldest = await query(logs, ACME, query='{} |~ "step [0-9]"', limit=2, direction="forward")
    assert [e.message for e in oldest.entries] == ["step 0 ok", "step 1 ok"]
    warned = await query(logs, ACME, query='{logger=~"launchpad\\\\..*"}', level="warning")
    assert [e.message for e in warned.entries] == ["step 9 failed"]
    later = await query(logs, ACME, query="{}", start=str(time.time() + 60), end=str(time.time() + 120))
    assert list(later.entries) == []


@pytest.mark.parametrize(
    ("bad", "position"),
    [
        ('{service="data"', 15),
        ('{service=="data"}', 9),
        ('service="data"', 0),
        ('{service="data"} |= data', 20),
        ('{service=~"("}', 10),
        ('{service="data"} | "x"', 17),
    ],
)
async def test_unparseable_selector_is_invalid_argument_with_the_position(
    logs: Any, bad: str, position: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(logs, ACME, query=bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"position {position}:" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"limit": 5001}, "limit"),
        ({"direction": "sideways"}, "direction"),
        ({"start": "yesterday"}, "start"),
        ({"start": "200", "end": "100"}, "start must not be after end"),
    ],
)
async def test_bad_parameters_are_invalid_argument(logs: Any, fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(logs, ACME, query="{}", **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (err.value.details() or "")


async def test_tenants_see_only_their_lines_the_platform_admin_sees_all(logs: Any) -> None:
    log_in_call("acme secret", "acme", "ra")
    log_in_call("globex secret", "globex", "rg")
    selector = '{} |= "secret"'
    assert [e.message for e in (await query(logs, ACME, query=selector)).entries] == ["acme secret"]
    assert [e.message for e in (await query(logs, GLOBEX, query=selector)).entries] == ["globex secret"]
    everything = await query(logs, PLATFORM, query=selector)
    assert sorted(e.message for e in everything.entries) == ["acme secret", "globex secret"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await query(logs, metadata(), query=selector)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_tail_receives_a_line_written_after_it_started(logs: Any, settings_env: Path) -> None:
    log_in_call("before the tail", "acme", "r-before")
    call = logs.Tail(logs_pb2.TailRequest(query='{} |= "tail-me"'), metadata=ACME)
    await asyncio.sleep(0.6)  # the tail has positioned itself at the files' ends
    log_in_call("globex tail-me", "globex", "r-g")  # another tenant's line: never delivered
    log_in_call("acme tail-me now", "acme", "r-after")
    # A new file appears and grows too (a service started after the tail did).
    extra = settings_env.parent / "logs" / "late.log"
    extra.write_text(
        '{"ts":"2030-01-01T00:00:00.000Z","level":"info","service":"late","tenant":"acme",'
        '"request_id":"r-late","message":"late tail-me"}\n'
    )
    got = [await asyncio.wait_for(call.read(), 5) for _ in range(2)]
    assert sorted(r.entry.message for r in got) == ["acme tail-me now", "late tail-me"]
    call.cancel()


def loki_routes(streams: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"status": "success", "data": {"resultType": "streams", "result": streams, "stats": {}}}
    return {"/ready": lambda q: (200, b"ready"), "/loki/api/v1/query_range": lambda q: (200, body)}


async def test_live_loki_query_range_with_the_tenant_header(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time_ns()
    streams = [
        {"stream": {"service": "data", "level": "error"}, "values": [[str(now - 2000), "plain text line"]]},
        {
            "stream": {"service": "auth"},
            "values": [[str(now - 1000), '{"level":"info","request_id":"r1","message":"json line"}']],
        },
    ]
    with fake_http(loki_routes(streams)) as loki:
        monkeypatch.setenv("LOKI_URL", loki.url)
        async with running_service("logs", build) as (runtime, channel):
            stub = logs_pb2_grpc.LogsServiceStub(channel)
            found = await query(stub, GLOBEX, query='{service=~"data|auth"} |= "line"', level="error")
    assert found.mode == "live" and runtime.deps.all()[0].mode == "live"
    assert [(e.service, e.message, e.request_id) for e in found.entries] == [
        ("auth", "json line", "r1"),
        ("data", "plain text line", ""),
    ]
    [(_, params, headers)] = [r for r in loki.requests if r[0] == "/loki/api/v1/query_range"]
    assert headers["X-Scope-OrgID"] == "globex"
    assert params["query"] == '{service=~"data|auth", level="error"} |= "line"'
    assert (params["limit"], params["direction"]) == ("100", "backward")


async def test_live_loki_errors_map_to_statuses(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    routes = {
        "/ready": lambda q: (200, b"ready"),
        "/loki/api/v1/query_range": lambda q: (400, b"parse error at line 1, col 3: syntax error"),
    }
    with fake_http(routes) as loki:
        monkeypatch.setenv("LOKI_URL", loki.url)
        async with running_service("logs", build) as (_runtime, channel):
            stub = logs_pb2_grpc.LogsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await query(stub, ACME, query="{}")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parse error at line 1" in (err.value.details() or "")


@contextlib.asynccontextmanager
async def fake_loki_tail(status: int = 101) -> AsyncIterator[tuple[str, list[Any]]]:
    """Loki's /ready and /loki/api/v1/tail WebSocket: records each tail request, then pushes two messages, or
    refuses the handshake with `status` (Loki answers a bad query with HTTP 400 before upgrading)."""
    tails: list[Any] = []
    now = time.time_ns()
    messages = [
        {
            "streams": [
                {"stream": {"service": "auth", "level": "warning"}, "values": [[str(now), "first tail"]]}
            ]
        },
        {
            "streams": [
                {
                    "stream": {"service": "data"},
                    "values": [[str(now + 1), '{"level":"error","request_id":"r7","message":"second tail"}']],
                }
            ],
            "dropped_entries": [{"labels": {"service": "data"}, "timestamp": str(now)}],
        },
    ]

    def check(connection: Any, request: Any) -> Any:
        path = urlsplit(request.path).path
        if path == "/ready":
            return connection.respond(200, "ready\n")
        if path != "/loki/api/v1/tail":
            return connection.respond(404, "not found\n")
        tails.append(request)
        if status != 101:
            return connection.respond(status, "parse error at line 1, col 2: syntax error\n")
        return None

    async def handler(ws: Any) -> None:
        for message in messages:
            await ws.send(orjson.dumps(message).decode())
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, process_request=check) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", tails


async def test_live_loki_tail_websocket_streams_entries(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_loki_tail() as (url, tails):
        monkeypatch.setenv("LOKI_URL", url)
        async with running_service("logs", build) as (_runtime, channel):
            stub = logs_pb2_grpc.LogsServiceStub(channel)
            before = time.time_ns()
            call = stub.Tail(
                logs_pb2.TailRequest(query='{service=~"auth|data"}', level="error"), metadata=GLOBEX
            )
            got = [(await asyncio.wait_for(call.read(), 5)).entry for _ in range(2)]
            call.cancel()
    assert [(e.service, e.level, e.request_id, e.message) for e in got] == [
        ("auth", "warning", "", "first tail"),  # Loki filters; the adapter passes on what Loki sends
        ("data", "error", "r7", "second tail"),
    ]
    [request] = tails
    params = {k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()}
    assert params["query"] == '{service=~"auth|data", level="error"}'
    assert params["limit"] == "100" and before <= int(params["start"]) <= time.time_ns()
    assert request.headers["X-Scope-OrgID"] == "globex"


@pytest.mark.parametrize(
    ("status", "code", "needle"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT, "parse error at line 1"),
        (503, grpc.StatusCode.UNAVAILABLE, "HTTP 503"),
    ],
)
async def test_live_loki_tail_refusals_map_to_statuses(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, status: int, code: grpc.StatusCode, needle: str
) -> None:
    async with fake_loki_tail(status) as (url, _tails):
        monkeypatch.setenv("LOKI_URL", url)
        async with running_service("logs", build) as (_runtime, channel):
            call = logs_pb2_grpc.LogsServiceStub(channel).Tail(
                logs_pb2.TailRequest(query="{}"), metadata=ACME
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(call.read(), 5)
    assert err.value.code() == code and needle in (err.value.details() or "")


async def test_live_loki_tail_unreachable_is_unavailable(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with fake_loki_tail() as (url, _tails):
        pass  # a port that just stopped listening
    monkeypatch.setenv("SIMULATION_MODE", "false")  # live even though Loki does not answer: no fallback
    monkeypatch.setenv("LOKI_URL", url)
    async with running_service("logs", build) as (runtime, channel):
        assert runtime.deps.all()[0].mode == "live"
        call = logs_pb2_grpc.LogsServiceStub(channel).Tail(logs_pb2.TailRequest(query="{}"), metadata=ACME)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), 5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Loki tail" in (err.value.details() or "")
