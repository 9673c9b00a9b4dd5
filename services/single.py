"""`python -m services.single`: the edge and every built service in one process (LAUNCHPAD_TOPOLOGY=single).

The composition root of that topology, so the one module under services/ that runs the edge. On one uvloop
event loop it starts each service as its own process would (services/core/server.py: its settings, data dir,
audit log, logger; its gRPC server on its port with health, reflection and /metrics), registers each
server's in-process twin under every address callers dial, then serves the edge with uvicorn. Calls between
them (edge -> service, ai -> data, auth -> data/storage, JWKS fetches) take the in-process channel and pass
the same interceptors; anything dialled from outside reaches the same servicers over the ports.

SIGTERM/SIGINT: the edge stops taking requests and drains, then every service drains (health NOT_SERVING,
in-flight calls get their grace on both servers), the in-process servers are unregistered, and each runtime's
closers run, last started first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import sys
from collections.abc import Iterator

import uvicorn
import uvloop

from edge.__main__ import edge_config  # the edge's own start-up: both topologies share it
from services.core.config import built_services, load_settings
from services.core.inproc import REGISTRY
from services.core.server import (
    SHUTDOWN_GRACE_S,
    Build,
    Runtime,
    Served,
    drain_service,
    new_runtime,
    start_service,
    stop_signal,
)
from services.core.topology import dialled_addresses, serve_service_metrics, serving, setup_shared_logging

log = logging.getLogger("launchpad.single")
TOPOLOGY = "single"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its own signal handlers: this process stops every server on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def service_build(name: str) -> Build:
    """The build function `python -m services.<name>` serves (its __main__ imports it)."""
    return importlib.import_module(f"services.{name}.__main__").build


class Services:
    """The services started in this process, in start order, and the addresses their twins answer."""

    def __init__(self) -> None:
        self.runtimes: list[Runtime] = []
        self.served: list[Served] = []
        self.addresses: list[str] = []

    async def start(self, name: str) -> None:
        with serving(name):  # the tasks it starts log as it
            runtime = new_runtime(load_settings(name), own_logging=False)
            self.runtimes.append(runtime)
            served = await start_service(runtime, service_build(name), serve_service_metrics(name))
        self.served.append(served)
        assert runtime.inproc is not None
        addresses = dialled_addresses(runtime.settings, served.port)
        REGISTRY.register(runtime.inproc, *addresses)
        self.addresses.extend(addresses)

    async def stop(self) -> None:
        await asyncio.gather(*(drain_service(served) for served in self.served), return_exceptions=True)
        REGISTRY.unregister(*self.addresses)
        for runtime in reversed(self.runtimes):
            await runtime.close()


async def serve_single(names: list[str]) -> int:
    """Serves until SIGTERM/SIGINT (0) or until the edge stops by itself (1, its log says why)."""
    stop = stop_signal()
    edge_settings = load_settings("edge")
    setup_shared_logging(names, edge_settings.process.log_dir)
    services = Services()
    try:
        for name in names:  # in port order: auth's keys and data exist before the services calling them
            await services.start(name)
        with serving("edge"):
            server = _EmbeddedServer(edge_config(edge_settings))
            edge = asyncio.create_task(_run_edge(server))
        # Everything built so far lives as long as the process (as the edge's own main does).
        gc.freeze()
        log.info(
            "serving",
            extra={"topology": TOPOLOGY, "edge_port": edge_settings.process.port, "services": names},
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([edge, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        await _stop_edge(server, edge)
        return 0 if stop.is_set() else 1
    finally:
        await services.stop()
        log.info("stopped")


async def _run_edge(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits when it cannot bind or its lifespan fails: stop the services instead
        log.error("the edge did not start")


async def _stop_edge(server: uvicorn.Server, edge: asyncio.Task[None]) -> None:
    """New connections refused, open ones drained; after the grace the rest are cut."""
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(edge), SHUTDOWN_GRACE_S)
    except TimeoutError:
        server.force_exit = True
        await edge


def main() -> int:
    topology = os.environ.setdefault("LAUNCHPAD_TOPOLOGY", TOPOLOGY).strip().lower()
    if topology != TOPOLOGY:
        print(f"services.single serves LAUNCHPAD_TOPOLOGY=single, not {topology!r}", file=sys.stderr)
        return 2
    return uvloop.run(serve_single(built_services()))


if __name__ == "__main__":
    sys.exit(main())
