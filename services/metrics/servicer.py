"""MetricsService: a Prometheus query proxy (live, cached) or synthetic series from the services' counters."""

from __future__ import annotations

from typing import Any

from google.protobuf.struct_pb2 import Struct

from launchpad.metrics.v1 import metrics_pb2, metrics_pb2_grpc
from services.core.context import current_principal
from services.core.deps import Mode, keep_live
from services.core.errors import InvalidArgument
from services.core.server import Runtime, ServiceSpec
from services.metrics.embedded import EmbeddedMetrics
from services.metrics.prom import Answer, Cache, PromClient

REMEDIATION = "set PROM_URL to a Prometheus base URL (http://host:9090) for full PromQL over real history"


def _validate(request: metrics_pb2.QueryRequest) -> bool:
    """True for a range query; refuses half of one."""
    if not request.query.strip():
        raise InvalidArgument("query is required", field="query")
    parts = {"start": request.start, "end": request.end, "step": request.step}
    if not any(parts.values()):
        return False
    missing = [name for name, value in parts.items() if not value]
    if missing:
        raise InvalidArgument(f"a range query needs start, end and step; missing {', '.join(missing)}")
    return True


def to_proto(answer: Answer) -> metrics_pb2.QueryResponse:
    data = Struct()
    data.update(answer.data)
    return metrics_pb2.QueryResponse(
        status=answer.status,
        data=data,
        synthetic=answer.synthetic,
        cached=answer.cached,
        warnings=list(answer.warnings),
    )


class MetricsServicer(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, prom: PromClient | None, embedded: EmbeddedMetrics) -> None:
        self.prom, self.embedded, self.cache = prom, embedded, Cache()

    async def Query(self, request: metrics_pb2.QueryRequest, context: Any) -> metrics_pb2.QueryResponse:
        is_range = _validate(request)
        if self.prom is None:
            return to_proto(await self.embedded.query(request.query, request.time, is_range))
        prom = self.prom
        if is_range:
            path = "/api/v1/query_range"
            params = {
                "query": request.query,
                "start": request.start,
                "end": request.end,
                "step": request.step,
            }
        else:
            path = "/api/v1/query"
            params = {"query": request.query, **({"time": request.time} if request.time else {})}
        key = (current_principal().tenant, path, *(f"{k}={v}" for k, v in sorted(params.items())))
        return to_proto(await self.cache.get(key, lambda: prom.get(path, params)))


async def open_prom(runtime: Runtime) -> PromClient | None:
    settings = runtime.settings
    configured = bool(settings.telemetry.prom_url) and settings.process.simulation_mode is not True
    prom = PromClient(settings.telemetry.prom_url, settings.query.timeout_ms / 1000) if configured else None
    mode, prom = await keep_live(
        runtime.deps, "prometheus", settings.process.simulation_mode, prom,
        target=settings.telemetry.prom_url, detail="Prometheus HTTP API",
        unanswered="Prometheus not answering (SIMULATION_MODE=false)",
    )  # fmt: skip
    if prom is not None:
        return prom
    detail = "Prometheus not answering at start-up" if mode is Mode.FALLBACK else "synthetic, from /metrics"
    runtime.deps.add("prometheus", mode, "", detail=detail, remediation=REMEDIATION)
    return None


async def build(runtime: Runtime) -> list[ServiceSpec]:
    prom = await open_prom(runtime)
    embedded = EmbeddedMetrics(runtime.settings)
    runtime.closers.append(embedded.close)
    if prom is not None:
        runtime.closers.append(prom.close)
    descriptor = metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"]
    servicer = MetricsServicer(prom, embedded)
    return [ServiceSpec(descriptor, servicer, metrics_pb2_grpc.add_MetricsServiceServicer_to_server)]
