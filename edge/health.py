"""GET /health (the backends' gRPC health and dependency modes) and GET /metrics (Prometheus).

/health asks every backend in settings.peers.backends (LAUNCHPAD_BACKENDS), concurrently and with a short
deadline, for its grpc.health.v1 status and its StatusService dependencies. One answer is shared for CACHE_S
and concurrent requests wait for the same check, so /health cannot be used to put load on the backends.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import orjson
from grpc_health.v1 import health_pb2
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import Receive, Scope, Send

from edge import codec
from edge.clients import Backends
from launchpad.api.v1 import status_pb2
from services.core.supervision import read_status

CHECK_TIMEOUT_S = 1.0
CACHE_S = 1.0
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_GET_STATUS = "/launchpad.api.v1.StatusService/GetStatus"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_EMBEDDED_MODES = frozenset({"embedded", "fallback"})
SUPERVISION_FILE_ENV = "LAUNCHPAD_SUPERVISION_FILE"  # set by the launcher that supervises this edge


class HealthChecker:
    def __init__(
        self, backends: Backends, names: list[str], simulation_mode: bool | None, topology: str = "split"
    ) -> None:
        self.backends = backends
        self.names = names
        self.simulation_mode = simulation_mode
        self.topology = topology  # LAUNCHPAD_TOPOLOGY: split (a process per service) or single (one process)
        self._encode_dependency = codec.encoder(status_pb2.Dependency.DESCRIPTOR)
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._running: asyncio.Task[dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        """The health document, at most CACHE_S old; one check in flight at a time."""
        if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
            return self._cached[1]
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check_all())
        return await asyncio.shield(self._running)

    async def _check_all(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self._check(name) for name in self.names))
        services = dict(zip(self.names, results, strict=True))
        healthy = all(s["status"] == "SERVING" for s in services.values())
        modes = {d["mode"] for s in services.values() for d in s["dependencies"]}
        simulated = self.simulation_mode is True or bool(modes & _EMBEDDED_MODES)
        report = {"status": "ok" if healthy else "degraded", "env": "SIM" if simulated else "LIVE"}
        report["topology"] = self.topology
        report["services"] = services
        supervision = _supervision()
        if supervision is not None:
            report["supervision"] = supervision
        self._cached = (time.monotonic(), report)
        return report

    async def _check(self, name: str) -> dict[str, Any]:
        address = self.backends.address(name)
        channel = self.backends.channel(name)
        metadata = (("x-request-id", f"edge-health-{uuid.uuid4().hex[:12]}"),)
        health = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        status = channel.unary_unary(
            _GET_STATUS,
            request_serializer=status_pb2.GetStatusRequest.SerializeToString,
            response_deserializer=status_pb2.GetStatusResponse.FromString,
        )
        checked, described = await asyncio.gather(
            health(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=CHECK_TIMEOUT_S),
            status(status_pb2.GetStatusRequest(), metadata=metadata, timeout=CHECK_TIMEOUT_S),
            return_exceptions=True,
        )
        return self._describe(address, checked, described)

    def _describe(self, address: str, checked: Any, described: Any) -> dict[str, Any]:
        if isinstance(checked, BaseException):
            detail = (
                checked.code().name if isinstance(checked, grpc.aio.AioRpcError) else type(checked).__name__
            )
            return {"status": "UNAVAILABLE", "address": address, "dependencies": [], "detail": detail}
        entry: dict[str, Any] = {
            "status": "SERVING" if checked.status == _SERVING else "NOT_SERVING",
            "address": address,
            "dependencies": [],
        }
        if isinstance(described, status_pb2.GetStatusResponse):
            entry["dependencies"] = [self._encode_dependency(d) for d in described.dependencies]
            entry["env"] = described.env
            entry["version"] = described.version
        return entry


def _supervision() -> dict[str, Any] | None:
    """What `make up` (the split launcher) reports of the processes it supervises: per process its state
    (running, starting, restarting, failed), restarts, last exit code and last error line. None when nothing
    supervises this edge (Helm, compose: the orchestrator restarts pods) or its supervisor has not written
    yet; then /health has no "supervision" section."""
    path = os.environ.get(SUPERVISION_FILE_ENV)
    return read_status(Path(path)) if path else None


class HealthEndpoint:
    """GET /health: 200 when every backend is SERVING, 503 (same document) otherwise."""

    def __init__(self, checker: HealthChecker) -> None:
        self.checker = checker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        report = await self.checker.report()
        status = 200 if report["status"] == "ok" else 503
        await _send(send, status, orjson.dumps(report), b"application/json")


class MetricsEndpoint:
    """GET /metrics: the process's prometheus_client registry (edge, rate limiter and WAF counters)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST.encode())


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
