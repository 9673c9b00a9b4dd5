"""The edge's app factory: routes from the contracts, middleware, health, metrics and docs.

Middleware, outermost first (the one place this order is written down):
- ErrorGuard: a last resort, a JSON 500 for what nothing mapped;
- FindRoute: finds the request's route once, as the router will, and leaves its edge rule in the scope
  (edge/transcoding/rules.py) for the body limit, content type and WAF below;
- request id (every answer, errors included, carries one), HTTP metrics, CORS (so browsers can read error
  answers too), body limit (before anything reads a body), content type, rate limit, WAF (reads and replays
  the body);
then contract routes go straight to their endpoints (DirectRoutes, with FindRoute's match), and everything
else (docs, OpenAPI, 404/405) through FastAPI's own stack. All of it is plain ASGI -- no BaseHTTPMiddleware,
no pydantic models on the request path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from google.protobuf.descriptor import ServiceDescriptor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from edge.clients import Backends, JwksSource, make_verifier
from edge.errors import answered, api_error, api_response, request_id_of
from edge.fanout import FanoutSocket
from edge.health import HealthChecker, HealthEndpoint, MetricsEndpoint
from edge.middleware.body_limit import BodyLimits
from edge.middleware.content_type import ContentTypeMiddleware
from edge.middleware.cors import BrowserCors
from edge.middleware.error_guard import ErrorGuard
from edge.middleware.metrics import HttpMetricsMiddleware
from edge.middleware.rate_limit import RateLimiter, RateLimitMiddleware, make_limiter
from edge.middleware.request_id import RequestIdMiddleware
from edge.middleware.waf import WafMiddleware
from edge.objects import object_routes
from edge.openapi import build_openapi
from edge.transcoding.context import EdgeContext
from edge.transcoding.discovery import contract_services
from edge.transcoding.endpoint import rpc_routes
from edge.transcoding.rules import RouteRule
from edge.transcoding.specs import WebSocketSpec, build_specs, byte_stream_specs
from edge.transcoding.table import DirectRoutes, FindRoute, RouteTable
from edge.websocket import WebSocketBridge
from services.core.audit import AuditLog
from services.core.config import Settings, load_settings
from services.core.internal import internal_secret
from services.core.tokens import TokenVerifier
from services.core.version import VERSION

_CORS_HEADERS = ["authorization", "content-type", "x-request-id", "grpc-timeout"]


def create_app(
    settings: Settings | None = None,
    *,
    services: list[ServiceDescriptor] | None = None,
    backends: Backends | None = None,
    verifier: TokenVerifier | None = None,
    limiter: RateLimiter | None = None,
    audit: Any = None,
    health_backends: list[str] | None = None,
    relay: bool = True,
) -> FastAPI:
    """The edge for `settings` (load_settings("edge") by default). Keyword arguments replace parts in tests:
    `services` the contracts to expose (all of generated/ by default), `verifier` the token verifier (keys
    from the auth service by default), `health_backends` the services /health checks (LAUNCHPAD_BACKENDS),
    `relay=False` serves relayed sockets with the per-socket bridge too (the bridge's own tests).
    """
    settings = settings or load_settings("edge")
    contracts = services if services is not None else contract_services()
    route_specs, socket_specs = build_specs(contracts)
    byte_specs = byte_stream_specs(contracts)
    backends = backends or Backends(settings.peers.addresses)
    _check_addresses(backends, [*route_specs, *socket_specs, *byte_specs])
    jwks = JwksSource(backends) if verifier is None else None
    verifier = verifier or make_verifier(settings, jwks)
    ctx = EdgeContext(backends, verifier, jwks)
    checker = HealthChecker(
        backends,
        health_backends or list(settings.peers.backends),
        settings.process.simulation_mode,
        topology=settings.process.topology,
    )
    app = _fastapi(backends)
    document = build_openapi(route_specs, socket_specs, VERSION)
    app.openapi = lambda: document  # type: ignore[method-assign]
    fixed = [
        Route("/health", HealthEndpoint(checker), methods=["GET"]),
        Route("/metrics", MetricsEndpoint(), methods=["GET"]),
        *object_routes(ctx, byte_specs),
    ]
    table = RouteTable([*fixed, *rpc_routes(route_specs, ctx)])
    app.router.routes.insert(0, table)  # before FastAPI's /docs routes
    app.edge_table = table
    app.edge_sockets = _socket_apps(socket_specs, ctx, internal_secret(settings) if relay else None)
    _add_middleware(
        app,
        settings,
        [spec.rule for spec in [*route_specs, *byte_specs]],
        verifier,
        limiter or make_limiter(settings),
        audit or AuditLog(settings.process.audit_path),
    )
    app.state.edge = ctx
    app.state.health = checker
    return app


def _socket_apps(
    specs: list[WebSocketSpec], ctx: EdgeContext, relay_secret: str | None
) -> dict[str, ASGIApp]:
    """An app per streaming contract's WebSocket path: multiplexed over the contract's relay RPC when it names
    one (edge/fanout.py), else one backend stream per socket (edge/websocket.py)."""
    return {
        spec.path: FanoutSocket(spec, ctx, relay_secret)
        if relay_secret and spec.policy.websocket_relay
        else WebSocketBridge(spec, ctx)
        for spec in specs
    }


def _check_addresses(backends: Backends, specs: list[Any]) -> None:
    """Every contract served must have a backend address: fail at start-up, not on the first request."""
    missing = sorted({spec.service for spec in specs} - set(backends.addresses))
    if missing:
        raise ValueError(f"no backend address for {', '.join(missing)} (set LAUNCHPAD_<NAME>_ADDR)")


class EdgeApp(FastAPI):
    """FastAPI with the edge's middleware outermost and contract routes short-circuited.

    FastAPI's own stack (error, telemetry and exception layers, router, APIRouter, route) cost about as much
    per request as the whole translation; the contract endpoints map every error themselves, so they are
    called directly and FastAPI serves the rest (docs, OpenAPI, unknown paths).
    """

    edge_table: RouteTable | None = None
    edge_sockets: dict[str, ASGIApp] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        inner: ASGIApp = super().build_middleware_stack()
        app: ASGIApp = (
            DirectRoutes(inner, self.edge_table, self.edge_sockets or {}) if self.edge_table else inner
        )
        for cls, kwargs in self.__dict__.get("_edge_middleware", []):  # first added is innermost
            app = cls(app, **kwargs)
        if self.edge_table:
            app = FindRoute(app, self.edge_table)
        return ErrorGuard(app)

    def add_edge_middleware(self, cls: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("_edge_middleware", []).append((cls, kwargs))


def _fastapi(backends: Backends) -> EdgeApp:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await backends.close()

    app = EdgeApp(
        title="Launchpad API",
        version=VERSION,
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
        # No OpenTelemetry hooks: their per-request provider checks cost more than the edge's own work;
        # the edge exports Prometheus metrics instead (GET /metrics).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.add_exception_handler(HTTPException, _error)  # the router's 404 and 405
    app.add_exception_handler(Exception, _error)
    return app


def _add_middleware(
    app: EdgeApp,
    settings: Settings,
    rules: list[RouteRule],
    verifier: TokenVerifier,
    limiter: Any,
    audit: Any,
) -> None:
    # Like add_middleware, the last one added is the outermost; EdgeApp puts them outside FastAPI's stack.
    add = app.add_edge_middleware
    add(WafMiddleware, audit=audit, route_rules=rules, max_body_bytes=settings.edge.max_body_bytes)
    add(
        RateLimitMiddleware,
        limiter=limiter,
        verifier=verifier,
        per_principal=settings.edge.rate_limit_per_minute,
        per_ip=settings.edge.rate_limit_ip_per_minute,
    )
    add(ContentTypeMiddleware)
    add(BodyLimits, max_bytes=settings.edge.max_body_bytes, upload_bytes=settings.storage.max_upload_bytes)
    add(
        BrowserCors,
        allow_origins=list(settings.edge.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=_CORS_HEADERS,
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )
    add(HttpMetricsMiddleware)
    add(RequestIdMiddleware)


async def _error(request: Request, exc: Exception) -> Response:
    """What escapes FastAPI's own stack (docs, unknown paths), in the edge's JSON error shape. Starlette raises
    an unexpected exception again once this answered it: `answered` keeps ErrorGuard from logging it twice."""
    request_id = request_id_of(request.scope)
    answered(request.scope, exc)
    return api_response(api_error(exc, request_id, where="FastAPI's stack"), request_id)
