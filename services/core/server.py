"""Server bootstrap shared by every gRPC service: one call builds, serves and stops a service.

`run_service("data", build)` is the whole main of a service: JSON logs, the dependency registry, the audit
log, the kit interceptor, grpc.health.v1 (NOT_SERVING while a required dependency is down), reflection,
StatusService, Prometheus /metrics on the gRPC port + 1000, and graceful shutdown on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from launchpad.api.v1 import status_pb2, status_pb2_grpc
from services.core.audit import AuditLog
from services.core.clients import jwks_fetcher
from services.core.config import Settings, load_settings
from services.core.contracts import service_policies
from services.core.deps import Registry
from services.core.inproc import InProcessServer, Mirror
from services.core.interceptors import KitInterceptor
from services.core.internal import internal_secret
from services.core.jsonlog import setup_logging
from services.core.metrics import serve_metrics
from services.core.tokens import KeyProvider, RefreshingKeys, TokenVerifier
from services.core.topology import ServiceTag
from services.core.version import VERSION

HEALTH_INTERVAL_S = 2.0
SHUTDOWN_GRACE_S = 5.0
_MAX_MESSAGE = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One gRPC service to serve: its descriptor, the servicer and the generated add_*_to_server."""

    descriptor: ServiceDescriptor
    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]


@dataclass(slots=True)
class Runtime:
    """What a service's build() gets: settings, dependency registry, audit log, logger.

    build() may set `keys` (the auth service serves its own) and add `closers` run at shutdown.
    """

    settings: Settings
    deps: Registry
    audit: AuditLog
    log: logging.Logger
    keys: KeyProvider | None = None
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
    health: health.aio.HealthServicer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    inproc: InProcessServer | None = None  # the server's handlers and interceptors, for in-process channels

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = closer()
                if asyncio.iscoroutine(result):
                    await result
        self.audit.close()


Build = Callable[[Runtime], Awaitable[list[ServiceSpec]]]
MetricsServer = Callable[[str, int], Any]


def new_runtime(settings: Settings, *, own_logging: bool = True) -> Runtime:
    """A service's runtime; `own_logging` routes the process's logs to this service (False: the caller
    already set up logging for several services in one process)."""
    # The data dir holds password hashes, keys and the audit log: owner-only.
    settings.process.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    service = settings.process.service
    log = (
        setup_logging(service, settings.process.log_dir)
        if own_logging
        else logging.getLogger(f"launchpad.{service}")
    )
    return Runtime(settings, Registry(), AuditLog(settings.process.audit_path), log)


class _Status(status_pb2_grpc.StatusServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: Any
    ) -> status_pb2.GetStatusResponse:
        settings = self._runtime.settings
        deps = self._runtime.deps.all()
        embedded = settings.process.simulation_mode is True or any(dep.mode != "live" for dep in deps)
        return status_pb2.GetStatusResponse(
            service=settings.process.service,
            version=VERSION,
            env="SIM" if embedded else "LIVE",
            dependencies=[
                status_pb2.Dependency(
                    name=d.name,
                    mode=str(d.mode),
                    target=d.target,
                    healthy=d.healthy,
                    detail=d.detail,
                    remediation=d.remediation,
                    required=d.required,
                )
                for d in deps
            ],
        )


async def create_server(
    runtime: Runtime, specs: list[ServiceSpec], port: int | None = None
) -> tuple[grpc.aio.Server, int]:
    """Builds and starts the server; port 0 picks a free one (tests). Returns (server, bound port)."""
    settings = runtime.settings
    keys = runtime.keys or RefreshingKeys(jwks_fetcher(settings.peers.address("auth")))
    verifier = TokenVerifier(keys, settings.auth.issuer, settings.auth.audience)
    status_descriptor = status_pb2.DESCRIPTOR.services_by_name["StatusService"]
    policies = service_policies(status_descriptor, *(spec.descriptor for spec in specs))
    kit = KitInterceptor(
        settings.process.service, policies, verifier, runtime.audit, internal_secret(settings)
    )
    # One process serving several services tags each call with its service (log lines are filed by it).
    interceptors = (
        [ServiceTag(settings.process.service), kit] if settings.process.topology == "single" else [kit]
    )
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        # gRPC sets SO_REUSEPORT by default: a second `make up` would then start beside the first and
        # share its ports silently. Without it, the second one fails to bind and says so.
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    # Its in-process twin serves the same servicer objects through the same interceptor.
    runtime.inproc = InProcessServer(interceptors, options)
    both = Mirror(server, runtime.inproc)
    for spec in specs:
        spec.add_to_server(spec.servicer, both)
    status_pb2_grpc.add_StatusServiceServicer_to_server(_Status(runtime), both)
    runtime.health = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(runtime.health, both)
    names = [spec.descriptor.full_name for spec in specs]
    reflection.enable_server_reflection(
        [*names, status_descriptor.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME], both
    )
    address = f"{settings.process.host}:{settings.process.port if port is None else port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        raise SystemExit(
            f"{settings.process.service}: cannot listen on {address}: is it already running?"
        ) from None
    await server.start()
    await _publish_health(runtime, names)
    runtime.tasks.append(asyncio.create_task(_watch_health(runtime, names)))
    return server, bound


async def _publish_health(runtime: Runtime, names: list[str]) -> None:
    serving = await runtime.deps.probe()
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    assert runtime.health is not None
    for name in ("", *names):
        await runtime.health.set(name, status)


async def _watch_health(runtime: Runtime, names: list[str]) -> None:
    """Keeps grpc.health.v1 in step with the dependencies (NOT_SERVING while a required one is down)."""
    while True:
        await asyncio.sleep(HEALTH_INTERVAL_S)
        try:
            await _publish_health(runtime, names)
        except Exception:
            runtime.log.exception("health probe failed")


def run_service(name: str, build: Build) -> None:
    """The main of a gRPC service: serve until SIGTERM/SIGINT, then drain and stop.

    On uvloop: grpc.aio runs its own poller thread and works with any loop, and uvloop's loop costs less CPU
    per unary call (`make bench` shows how much).
    """
    uvloop.run(_serve(load_settings(name), build))


def stop_signal() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the serving loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


@dataclass(slots=True)
class Served:
    """A started service: its runtime, its gRPC server and the port that server is bound to."""

    runtime: Runtime
    server: grpc.aio.Server
    port: int
    metrics: Any = None  # the /metrics HTTP server, when the caller serves it (shut down at stop)


async def start_service(runtime: Runtime, build: Build, metrics: MetricsServer | None = None) -> Served:
    """Builds the service, starts its gRPC server (and its in-process twin) and its /metrics.

    `metrics(host, port)` serves /metrics and returns that HTTP server (default: the process registry).
    The caller closes the runtime if this raises."""
    settings = runtime.settings
    specs = await build(runtime)
    server, port = await create_server(runtime, specs)
    served = Served(runtime, server, port)
    if metrics is None:
        serve_metrics(settings.process.host, settings.process.metrics_port)
    else:
        served.metrics = metrics(settings.process.host, settings.process.metrics_port)
    runtime.log.info(
        "serving",
        extra={
            "port": port,
            "metrics_port": settings.process.metrics_port,
            "deps": [str(d.mode) for d in runtime.deps.all()],
        },
    )
    return served


async def drain_service(served: Served) -> None:
    """Health NOT_SERVING, then in-flight calls get SHUTDOWN_GRACE_S on both servers; new ones are refused."""
    runtime = served.runtime
    runtime.log.info("stopping: draining in-flight calls")
    if runtime.health is not None:
        await runtime.health.enter_graceful_shutdown()
    stopping = [served.server.stop(SHUTDOWN_GRACE_S)]
    if runtime.inproc is not None:
        stopping.append(runtime.inproc.stop(SHUTDOWN_GRACE_S))
    await asyncio.gather(*stopping)
    if served.metrics is not None:  # shutdown() waits for the serving thread's next poll: not on the loop
        await asyncio.to_thread(served.metrics.shutdown)
        served.metrics.server_close()


async def _serve(settings: Settings, build: Build) -> None:
    runtime = new_runtime(settings)
    stop = stop_signal()
    try:
        served = await start_service(runtime, build)
        await stop.wait()
        await drain_service(served)
    finally:
        await runtime.close()
