"""GET /health: each backend's grpc.health.v1 status and StatusService dependencies; GET /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge import health
from launchpad.api.v1 import status_pb2, status_pb2_grpc
from launchpad.auth.v1 import auth_pb2
from launchpad.data.v1 import data_pb2
from services.core.deps import Mode
from tests.edge.test_edge_app import (
    AuthServicer,
    DataServicer,
    _static_verifier,
    edge_app,
    free_address,
    kit_server,
    spec,
)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


@dataclasses.dataclass
class Backend:
    """A test backend serving the real grpc.health.v1 and launchpad.api.v1.StatusService contracts."""

    status: int = SERVING
    modes: tuple[str, ...] = ("live",)
    delay_s: float = 0.0
    checks: int = 0


class _Health(health_pb2_grpc.HealthServicer):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def Check(self, request: Any, context: Any) -> health_pb2.HealthCheckResponse:
        self.backend.checks += 1
        await asyncio.sleep(self.backend.delay_s)
        return health_pb2.HealthCheckResponse(status=self.backend.status)


class _Status(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def GetStatus(self, request: Any, context: Any) -> status_pb2.GetStatusResponse:
        deps = [
            status_pb2.Dependency(name=f"dep{i}", mode=mode, target="x", healthy=True, required=True)
            for i, mode in enumerate(self.backend.modes)
        ]
        return status_pb2.GetStatusResponse(service="test", version="9", env="LIVE", dependencies=deps)


@contextlib.asynccontextmanager
async def backend_server(backend: Backend) -> AsyncIterator[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(_Health(backend), server)
    status_pb2_grpc.add_StatusServiceServicer_to_server(_Status(backend), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def get_health(addresses: dict[str, str], **overrides: Any) -> httpx.Response:
    app = edge_app(addresses, verifier=_static_verifier(), health_backends=list(addresses), **overrides)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        response = await client.get("/health")
    await app.state.edge.backends.close()
    return response


async def test_real_kit_backends_on_embedded_defaults(settings_env: Any) -> None:
    embedded = (("sql", Mode.EMBEDDED),)
    async with (
        kit_server("data", spec(data_pb2, "DataService", DataServicer()), deps=embedded) as data,
        kit_server("auth", spec(auth_pb2, "AuthService", AuthServicer()), deps=embedded) as auth,
    ):
        response = await get_health({"data": data, "auth": auth})
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["env"]) == ("ok", "SIM")
    assert set(body["services"]) == {"data", "auth"}
    data_entry = body["services"]["data"]
    assert (data_entry["status"], data_entry["address"]) == ("SERVING", data)
    assert data_entry["dependencies"] == [
        {
            "name": "sql",
            "mode": "embedded",
            "target": "embedded://test",
            "healthy": True,
            "detail": "",
            "remediation": "",
            "required": True,
        }
    ]


async def test_live_when_every_dependency_is_live(settings_env: Any) -> None:
    async with backend_server(Backend()) as a, backend_server(Backend(modes=("live", "live"))) as b:
        body = (await get_health({"data": a, "auth": b})).json()
    assert (body["status"], body["env"]) == ("ok", "LIVE")


@pytest.mark.parametrize("mode", ["embedded", "fallback"])
async def test_sim_when_any_dependency_is_embedded_or_fallback(settings_env: Any, mode: str) -> None:
    async with backend_server(Backend()) as a, backend_server(Backend(modes=("live", mode))) as b:
        body = (await get_health({"data": a, "auth": b})).json()
    assert body["env"] == "SIM"


async def test_sim_when_simulation_mode_is_on(settings_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMULATION_MODE", "true")
    async with backend_server(Backend()) as a:
        body = (await get_health({"data": a})).json()
    assert body["env"] == "SIM"


async def test_backend_down_is_degraded_503(settings_env: Any) -> None:
    async with backend_server(Backend()) as a:
        down = free_address()
        response = await get_health({"data": a, "auth": down})
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["services"]["auth"] == {
        "status": "UNAVAILABLE",
        "address": down,
        "dependencies": [],
        "detail": "UNAVAILABLE",
    }
    assert body["services"]["data"]["status"] == "SERVING"


async def test_not_serving_backend_is_degraded(settings_env: Any) -> None:
    async with backend_server(Backend(status=NOT_SERVING)) as a:
        response = await get_health({"data": a})
    assert response.status_code == 503
    assert response.json()["services"]["data"]["status"] == "NOT_SERVING"


async def test_checks_run_concurrently_with_a_short_deadline(settings_env: Any) -> None:
    async with (
        backend_server(Backend(delay_s=0.6)) as slow1,
        backend_server(Backend(delay_s=0.6)) as slow2,
        backend_server(Backend(delay_s=30)) as hung,
    ):
        started = time.monotonic()
        body = (await get_health({"data": slow1, "auth": slow2, "storage": hung})).json()
        elapsed = time.monotonic() - started
    assert elapsed < health.CHECK_TIMEOUT_S + 0.8  # not 0.6 + 0.6 + 30
    assert body["services"]["storage"]["status"] == "UNAVAILABLE"
    assert body["services"]["storage"]["detail"] == "DEADLINE_EXCEEDED"
    assert body["services"]["data"]["status"] == "SERVING"


async def test_answers_are_shared_for_a_second(settings_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = Backend(delay_s=0.1)
    async with backend_server(backend) as a:
        app = edge_app({"data": a}, verifier=_static_verifier(), health_backends=["data"])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            burst = await asyncio.gather(*(client.get("/health") for _ in range(10)))
            again = await client.get("/health")
            assert backend.checks == 1
            monkeypatch.setattr(health, "CACHE_S", 0.0)
            await client.get("/health")
            assert backend.checks == 2
        await app.state.edge.backends.close()
    assert {r.status_code for r in [*burst, again]} == {200}


def test_backends_come_from_launchpad_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.config import SERVICES, load_settings
    from services.launcher import built_services

    monkeypatch.delenv("LAUNCHPAD_BACKENDS", raising=False)
    # The default: every service that exists as a server (services/<name>/__main__.py), in port order.
    default = load_settings("edge").peers.backends
    assert default == tuple(built_services()) and {"data", "auth", "storage"} <= set(default)
    assert list(default) == [name for name in SERVICES if name in default]
    monkeypatch.setenv("LAUNCHPAD_BACKENDS", " data, auth ,storage,")
    assert load_settings("edge").peers.backends == ("data", "auth", "storage")


async def test_metrics_are_prometheus_text(settings_env: Any) -> None:
    app = edge_app({}, verifier=_static_verifier())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        await client.get("/nowhere")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'launchpad_edge_http_requests_total{method="GET",route="unmatched",status="404"}' in response.text
