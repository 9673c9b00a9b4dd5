"""The metrics proxy against a real Prometheus (Debian package in CI: PROM_URL). Skipped when PROM_URL is
unset, failed instead under LAUNCHPAD_REQUIRE_LIVE=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict

from launchpad.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from services.metrics.servicer import build
from tests.support import make_token, metadata, need_env, running_service

PROM_URL = os.environ.get("PROM_URL", "")  # read at import, before any test isolates the environment


@pytest.fixture
def prom_url(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = PROM_URL or need_env("PROM_URL")
    monkeypatch.setenv("PROM_URL", url)
    monkeypatch.setenv("SIMULATION_MODE", "false")  # Prometheus or nothing
    return url


async def test_up_returns_the_prometheus_shape(prom_url: str) -> None:
    md = metadata(make_token(tenant="acme"))
    async with running_service("metrics", build) as (runtime, channel):
        stub = metrics_pb2_grpc.MetricsServiceStub(channel)
        [dep] = runtime.deps.all()
        assert (dep.mode, dep.healthy) == ("live", True)
        answer = await stub.Query(metrics_pb2.QueryRequest(query="up"), metadata=md)
        again = await stub.Query(metrics_pb2.QueryRequest(query="up"), metadata=md)
        ranged = await stub.Query(
            metrics_pb2.QueryRequest(query="up", start="1700000000", end="1700000060", step="15s"),
            metadata=md,
        )
    data = MessageToDict(answer.data)
    assert (answer.status, answer.synthetic, answer.cached, again.cached) == ("success", False, False, True)
    assert data["resultType"] == "vector" and data["result"], data
    series = data["result"][0]
    assert series["metric"]["__name__"] == "up" and "job" in series["metric"]
    timestamp, value = series["value"]
    assert isinstance(timestamp, float) and value in ("0", "1")
    assert MessageToDict(ranged.data)["resultType"] == "matrix"
