"""LogsService: LogQL-like search and live tail over the services' JSON logs (embedded) or Loki (live)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from launchpad.logs.v1 import logs_pb2, logs_pb2_grpc
from services.core.context import Principal, current_principal
from services.core.deps import Mode, keep_live
from services.core.errors import InvalidArgument
from services.core.server import Runtime, ServiceSpec
from services.logs import logql
from services.logs.sources import EmbeddedLogs, Entry, LokiLogs, Window, parse_ts

DEFAULT_LIMIT, MAX_LIMIT = 100, 5000
DEFAULT_RANGE_NS = 3600 * 1_000_000_000  # Loki's default: the last hour
REMEDIATION = "set LOKI_URL to a Loki base URL (http://host:3100) to search Loki instead of local files"


def parse_time(value: str, name: str) -> int | None:
    """RFC 3339 or Unix seconds (fractions allowed; 19+ digits are nanoseconds, as Loki accepts)."""
    value = value.strip()
    if not value:
        return None
    try:
        if value.isdigit() and len(value) >= 19:
            return int(value)
        return int(float(value) * 1_000_000_000)
    except (ValueError, OverflowError):  # "1e400" is inf: int() overflows
        pass
    try:
        return parse_ts(value)
    except ValueError:
        raise InvalidArgument(f"{name} must be RFC 3339 or Unix seconds, got {value!r}", field=name) from None


def scope_of(principal: Principal) -> str | None:
    """The platform admin reads every tenant's lines; everyone else their own tenant's."""
    return None if principal.is_platform_admin else principal.tenant


def to_proto(entry: Entry) -> logs_pb2.LogEntry:
    stamp = Timestamp()
    stamp.FromNanoseconds(entry.ts_ns)
    return logs_pb2.LogEntry(
        timestamp=stamp,
        service=entry.service,
        level=entry.level,
        request_id=entry.request_id,
        message=entry.message,
        labels=entry.labels,
    )


def window_of(request: logs_pb2.QueryRequest) -> Window:
    selector = logql.parse(request.query).with_level(request.level)
    limit = request.limit or DEFAULT_LIMIT
    if not 0 < limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", field="limit")
    direction = request.direction or "backward"
    if direction not in ("backward", "forward"):
        raise InvalidArgument(f"direction must be backward or forward, got {direction!r}", field="direction")
    end = parse_time(request.end, "end")
    end = time.time_ns() if end is None else end
    start = parse_time(request.start, "start")
    start = end - DEFAULT_RANGE_NS if start is None else start
    if start > end:
        raise InvalidArgument("start must not be after end", field="start")
    return Window(selector, start, end, limit, direction == "backward", scope_of(current_principal()))


class LogsServicer(logs_pb2_grpc.LogsServiceServicer):
    def __init__(self, source: EmbeddedLogs | LokiLogs) -> None:
        self.source = source

    async def Query(self, request: logs_pb2.QueryRequest, context: Any) -> logs_pb2.QueryResponse:
        entries = await self.source.query(window_of(request))
        return logs_pb2.QueryResponse(entries=[to_proto(e) for e in entries], mode=self.source.mode)

    async def Tail(self, request: logs_pb2.TailRequest, context: Any) -> AsyncIterator[logs_pb2.TailResponse]:
        # Runs until the client goes away: gRPC cancels this generator (the edge cancels on WebSocket close).
        selector = logql.parse(request.query).with_level(request.level)
        async for entry in self.source.tail(selector, scope_of(current_principal())):
            yield logs_pb2.TailResponse(entry=to_proto(entry))


async def open_source(runtime: Runtime) -> EmbeddedLogs | LokiLogs:
    settings = runtime.settings
    configured = bool(settings.telemetry.loki_url) and settings.process.simulation_mode is not True
    loki = LokiLogs(settings.telemetry.loki_url, settings.query.timeout_ms / 1000) if configured else None
    mode, loki = await keep_live(
        runtime.deps, "loki", settings.process.simulation_mode, loki, target=settings.telemetry.loki_url,
        detail="Loki query_range", unanswered="Loki not answering (SIMULATION_MODE=false: no fallback)",
    )  # fmt: skip
    if loki is not None:
        return loki
    detail = "Loki not answering at start-up" if mode is Mode.FALLBACK else "the services' JSON log files"
    runtime.deps.add("loki", mode, str(settings.process.log_dir), detail=detail, remediation=REMEDIATION)
    return EmbeddedLogs(settings.process.log_dir)


async def build(runtime: Runtime) -> list[ServiceSpec]:
    source = await open_source(runtime)
    runtime.closers.append(source.close)
    descriptor = logs_pb2.DESCRIPTOR.services_by_name["LogsService"]
    return [ServiceSpec(descriptor, LogsServicer(source), logs_pb2_grpc.add_LogsServiceServicer_to_server)]
