"""The metrics proxy on a real grpc.aio server: embedded (synthetic, from the services' counters) and live
against a local fake Prometheus that serves the HTTP API's JSON and counts requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from launchpad.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from services.metrics.servicer import build
from tests.services.fakehttp import fake_http
from tests.support import make_token, metadata, running_service

ACME = metadata(make_token(tenant="acme"))
GLOBEX = metadata(make_token(tenant="globex"))
VECTOR = {
    "resultType": "vector",
    "result": [{"metric": {"__name__": "up", "job": "prometheus"}, "value": [1700000000.5, "1"]}],
}


async def ask(stub: Any, md: Any = ACME, **fields: Any) -> metrics_pb2.QueryResponse:
    return await stub.Query(metrics_pb2.QueryRequest(**fields), metadata=md)


@pytest.fixture
async def embedded(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.delenv("PROM_URL", raising=False)
    monkeypatch.setenv("LAUNCHPAD_BACKENDS", "metrics")  # only this process: nothing else runs in tests
    async with running_service("metrics", build) as (_runtime, channel):
        yield metrics_pb2_grpc.MetricsServiceStub(channel)


async def test_embedded_answers_in_prometheus_vector_shape_from_real_counters(embedded: Any) -> None:
    await ask(embedded, query="launchpad_rpc_requests_total")  # counts itself
    answer = await ask(embedded, query='launchpad_rpc_requests_total{service="metrics", code="OK"}')
    assert (answer.status, answer.synthetic, answer.cached) == ("success", True, False)
    data = MessageToDict(answer.data)
    assert data["resultType"] == "vector"
    [series] = [s for s in data["result"] if s["metric"]["method"].endswith("/Query")]
    assert series["metric"]["__name__"] == "launchpad_rpc_requests_total"
    assert series["metric"]["job"] == "metrics"
    timestamp, value = series["value"]
    assert isinstance(timestamp, float) and int(value) >= 1  # the first call (counted when it ended)
    total = MessageToDict((await ask(embedded, query="sum(launchpad_rpc_requests_total)")).data)
    [summed] = total["result"]
    assert summed["metric"] == {} and int(summed["value"][1]) >= int(value)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"query": "rate(launchpad_rpc_requests_total[5m])"}, "embedded engine answers"),
        ({"query": 'up{job=~"("}'}, "bad regex"),
        ({"query": "up", "start": "1", "end": "2", "step": "1"}, "range queries need Prometheus"),
        ({"query": "up", "start": "1"}, "missing end, step"),
        ({"query": " "}, "query is required"),
    ],
)
async def test_embedded_refuses_what_it_does_not_support(
    embedded: Any, fields: dict[str, str], needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ask(embedded, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (err.value.details() or "")


def prom_routes(status: int = 200, body: Any = None) -> dict[str, Any]:
    ok = {"status": "success", "data": VECTOR, "warnings": ["w1"]}
    matrix = {"status": "success", "data": {"resultType": "matrix", "result": []}}
    return {
        "/-/ready": lambda q: (200, b"Prometheus Server is Ready."),
        "/api/v1/query": lambda q: (status, ok if body is None else body),
        "/api/v1/query_range": lambda q: (200, matrix),
    }


@pytest.fixture
def live_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("LAUNCHPAD_QUERY_TIMEOUT_MS", "1000")
    return monkeypatch


async def test_live_passes_the_shape_through_and_caches_identical_queries(live_env: Any) -> None:
    with fake_http(prom_routes()) as prom:
        live_env.setenv("PROM_URL", prom.url)
        async with running_service("metrics", build) as (_runtime, channel):
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            first = await ask(stub, query="up", time="1700000000.5")
            second = await ask(stub, query="up", time="1700000000.5")
            assert prom.hits("/api/v1/query") == 1  # the second never reached Prometheus
            await ask(stub, query="up", time="1700000001")  # another parameter: another key
            await ask(stub, GLOBEX, query="up", time="1700000000.5")  # another tenant: another key
            ranged = await ask(stub, query="up", start="1", end="2", step="1s")
    assert MessageToDict(first.data) == VECTOR and list(first.warnings) == ["w1"]
    assert (first.cached, second.cached, first.synthetic) == (False, True, False)
    assert MessageToDict(second.data) == VECTOR
    assert prom.hits("/api/v1/query") == 3
    [(_, params, _)] = [r for r in prom.requests if r[0] == "/api/v1/query_range"]
    assert params == {"query": "up", "start": "1", "end": "2", "step": "1s"}
    assert MessageToDict(ranged.data)["resultType"] == "matrix"


async def test_concurrent_identical_misses_make_one_upstream_request(live_env: Any) -> None:
    with fake_http(prom_routes(), delay_s=0.3) as prom:
        live_env.setenv("PROM_URL", prom.url)
        async with running_service("metrics", build) as (_runtime, channel):
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            answers = await asyncio.gather(*(ask(stub, query="sum(up)") for _ in range(10)))
    assert prom.hits("/api/v1/query") == 1
    assert sum(not a.cached for a in answers) == 1
    assert all(MessageToDict(a.data) == VECTOR for a in answers)


BAD = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}


@pytest.mark.parametrize(
    ("routes", "delay", "code", "needle"),
    [
        (prom_routes(400, BAD), 0.0, grpc.StatusCode.INVALID_ARGUMENT, 'parse error: unexpected "}"'),
        (prom_routes(), 1.5, grpc.StatusCode.DEADLINE_EXCEEDED, "did not answer in time"),
        (
            prom_routes(503, {"status": "error", "errorType": "timeout", "error": "query timed out"}),
            0.0,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "query timed out",
        ),
        (prom_routes(500, b"boom"), 0.0, grpc.StatusCode.UNAVAILABLE, "HTTP 500"),
    ],
)
async def test_prometheus_errors_map_to_statuses(
    live_env: Any, routes: Any, delay: float, code: grpc.StatusCode, needle: str
) -> None:
    with fake_http(routes, delay_s=delay) as prom:
        live_env.setenv("PROM_URL", prom.url)
        async with running_service("metrics", build) as (_runtime, channel):
            stub = metrics_pb2_grpc.MetricsServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ask(stub, query="up{")
            with pytest.raises(grpc.aio.AioRpcError):
                await ask(stub, query="up{")  # errors are not cached: asked again
    assert err.value.code() == code and needle in (err.value.details() or "")
    assert prom.hits("/api/v1/query") == 2


async def test_unreachable_prometheus_is_unavailable(live_env: Any) -> None:
    with fake_http(prom_routes()) as prom:
        gone = prom.url  # nothing listens there once the block ends
    live_env.setenv("PROM_URL", gone)
    live_env.setenv("SIMULATION_MODE", "false")  # live only: no synthetic fallback
    async with running_service("metrics", build) as (runtime, channel):
        [dep] = runtime.deps.all()
        assert (dep.mode, dep.healthy) == ("live", False)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ask(metrics_pb2_grpc.MetricsServiceStub(channel), query="up")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "unreachable" in (err.value.details() or "")
