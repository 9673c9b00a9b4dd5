"""What changes when several services share one process (the `single` topology): logs, metrics, addresses.

Each service keeps its own settings, runtime, audit log and logger; the process's shared state is split back
per service here:
- logs: one root handler files every record under the service it belongs to (reports/logs/<service>.log,
  `"service"` as in split): the logger's name when it names one (launchpad.auth.login), else the service whose
  call or task wrote it (ServiceTag marks every served call, `serving(name)` the tasks a service starts).
- metrics: prometheus_client's registry is the process's; each service's /metrics port serves a view of it
  holding that service's series (see ServiceMetrics), as its own process's registry would in split.
- addresses: every address a caller may dial for a service, so the in-process registry answers them all.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import grpc
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.core.config import Settings
from services.core.jsonlog import JsonFormatter

# The service a record belongs to when its logger does not say (the edge is the process's front door).
_SERVING: contextvars.ContextVar[str] = contextvars.ContextVar("launchpad_serving", default="edge")


@contextlib.contextmanager
def serving(service: str) -> Iterator[None]:
    """Records logged here, and by tasks and threads started here, belong to `service`."""
    token = _SERVING.set(service)
    try:
        yield
    finally:
        _SERVING.reset(token)


class ServiceTag(grpc.aio.ServerInterceptor):
    """Marks each call with the service serving it. grpc.aio (and the in-process server) resolve interceptors
    in the call's own task and context, so the mark lasts exactly as long as the call."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        _SERVING.set(self._service)
        return await continuation(details)


class ServiceFiles(logging.Handler):
    """The root handler of a process serving `services`: each record goes, formatted as that service's JSON
    line, to its log file and to stderr."""

    def __init__(self, services: Iterable[str], log_dir: Path) -> None:
        super().__init__()
        log_dir.mkdir(parents=True, exist_ok=True)
        self._handlers: dict[str, tuple[logging.Handler, ...]] = {}
        for service in services:
            formatter = JsonFormatter(service)
            pair = (logging.FileHandler(log_dir / f"{service}.log"), logging.StreamHandler(sys.stderr))
            for handler in pair:
                handler.setFormatter(formatter)
            self._handlers[service] = pair

    def service_of(self, record: logging.LogRecord) -> str:
        parts = record.name.split(".", 2)
        if len(parts) > 1 and parts[0] == "launchpad" and parts[1] in self._handlers:
            return parts[1]
        service = _SERVING.get()
        return service if service in self._handlers else "edge"

    def emit(self, record: logging.LogRecord) -> None:
        for handler in self._handlers[self.service_of(record)]:
            handler.handle(record)

    def close(self) -> None:
        for pair in self._handlers.values():
            for handler in pair:
                handler.close()
        super().close()


def setup_shared_logging(services: Iterable[str], log_dir: Path, level: int = logging.INFO) -> None:
    """Routes the root logger through ServiceFiles (services/core/jsonlog.py does it for one service)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(ServiceFiles([*services, "edge"], log_dir))
    root.setLevel(level)


# Families without a `service` label, by the service that defines them (services/<name>/, edge/).
FAMILY_OWNERS: tuple[tuple[str, str], ...] = (
    ("wpk_", "deploy"),
    ("realtime_", "realtime"),
    ("launchpad_ai_", "ai"),
    ("launchpad_edge_", "edge"),
    ("edge_", "edge"),
)


class ServiceMetrics(Collector):
    """The process registry as one service's /metrics shows it: series labelled `service` only when it is
    this one, families a service module defines (FAMILY_OWNERS) only on that service's port, and the process's
    own (process_*, python_*: one process, one set of figures) on every port."""

    def __init__(self, service: str) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            owner = next((svc for prefix, svc in FAMILY_OWNERS if family.name.startswith(prefix)), None)
            if owner is not None:
                if owner == self.service:
                    yield family
                continue
            if not any("service" in sample.labels for sample in family.samples):
                yield family
                continue
            mine = Metric(family.name, family.documentation, family.type, family.unit)
            mine.samples = [s for s in family.samples if s.labels.get("service") == self.service]
            if mine.samples:
                yield mine


def serve_service_metrics(service: str) -> Callable[[str, int], object]:
    """start_service's `metrics`: /metrics of `service` on host:port, as ServiceMetrics shows it."""

    def serve(host: str, port: int) -> object:
        if not port:
            return None
        server, _ = start_http_server(port, addr=host, registry=ServiceMetrics(service))
        return server

    return serve


def dialled_addresses(settings: Settings, port: int) -> list[str]:
    """Every address a caller may dial to reach this service: the configured one (LAUNCHPAD_<SVC>_ADDR, what
    the edge's Backends and the peers use) and the loopback spellings of the port it listens on."""
    service = settings.process.service
    aliases = [settings.peers.address(service), f"{settings.process.host}:{port}"]
    aliases += [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"ipv4:127.0.0.1:{port}"]
    return list(dict.fromkeys(aliases))
