"""The edge's app factory: routes from the contracts, middleware, health, metrics and docs.

Middleware, outermost first: a last-resort error guard, request id (every answer carries one), HTTP metrics,
CORS (so browsers can read error answers too), body limit, content type, rate limit, WAF; then contract
routes go straight to their endpoints, and everything else (docs, OpenAPI, 404/405) through FastAPI's own
stack. All of it is plain ASGI -- no BaseHTTPMiddleware, no pydantic models on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from google.protobuf.descriptor import ServiceDescriptor
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.clients import Backends, JwksSource, make_verifier
from edge.errors import ResponseTracker, error_response, request_id_of
from edge.fanout import FanoutSocket
from edge.health import (
    HealthChecker,
    HealthEndpoint,
    HttpMetricsMiddleware,
    MetricsEndpoint,
)
from edge.middleware import ContentTypeMiddleware, RequestIdMiddleware
from edge.objects import PREFIX as OBJECTS_PREFIX
from edge.objects import BodyLimits, object_routes, outside_uploads
from edge.openapi import build_openapi
from edge.ratelimit import RateLimiter, RateLimitMiddleware, make_limiter
from edge.routes import EdgeContext, RouteTable, WebSocketSpec, build_specs, contract_services, rpc_routes
from edge.waf import WafMiddleware
from edge.websocket import WebSocketBridge
from services.core.audit import AuditLog
from services.core.config import Settings, load_settings
from services.core.errors import Code
from services.core.internal import internal_secret
from services.core.server import VERSION
from services.core.tokens import TokenVerifier

log = logging.getLogger("launchpad.edge")

_HTTP_CODES = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}
_HTTP_CODES |= {404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED, 413: Code.INVALID_ARGUMENT}
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
    route_specs, socket_specs = build_specs(services if services is not None else contract_services())
    backends = backends or Backends(settings.addresses)
    _check_addresses(backends, [*route_specs, *socket_specs])
    jwks = JwksSource(backends) if verifier is None else None
    verifier = verifier or make_verifier(settings, jwks)
    ctx = EdgeContext(backends, verifier, jwks)
    checker = HealthChecker(backends, health_backends or list(settings.backends), settings.simulation_mode)
    app = _fastapi(backends)
    document = build_openapi(route_specs, socket_specs, VERSION)
    app.openapi = lambda: document  # type: ignore[method-assign]
    fixed = [
        Route("/health", HealthEndpoint(checker), methods=["GET"]),
        Route("/metrics", MetricsEndpoint(), methods=["GET"]),
        *object_routes(ctx),
    ]
    table = RouteTable([*fixed, *rpc_routes(route_specs, ctx)])
    app.router.routes.insert(0, table)  # before FastAPI's /docs routes
    app.edge_table = table
    app.edge_sockets = _socket_apps(socket_specs, ctx, internal_secret(settings) if relay else None)
    _add_middleware(
        app, settings, verifier, limiter or make_limiter(settings), audit or AuditLog(settings.audit_path)
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
        return ErrorGuard(app)

    def add_edge_middleware(self, cls: Any, **kwargs: Any) -> None:
        self.__dict__.setdefault("_edge_middleware", []).append((cls, kwargs))


class DirectRoutes:
    """Contract routes (and /health, /metrics) and WebSocket paths straight to their endpoint; the rest to
    FastAPI. (FastAPI's exception layer would otherwise wrap every frame a socket sends.)"""

    def __init__(self, app: ASGIApp, table: RouteTable, sockets: dict[str, ASGIApp]) -> None:
        self.app, self.table, self.sockets = app, table, sockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match, child = self.table.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                await child["endpoint"](scope, receive, send)
                return
        elif scope["type"] == "websocket" and (socket := self.sockets.get(scope["path"])) is not None:
            await socket(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ErrorGuard:
    """Last resort: an exception no layer mapped becomes a JSON 500 with the request id, never a trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracking_send = ResponseTracker(send)
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = request_id_of(scope)
            log.error("edge: unhandled error", exc_info=exc, extra={"request_id": request_id})
            if not tracking_send.started:
                response = error_response(
                    Code.INTERNAL, f"internal error (request id {request_id})", request_id
                )
                await response(scope, receive, send)


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
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    return app


def _add_middleware(
    app: EdgeApp, settings: Settings, verifier: TokenVerifier, limiter: Any, audit: Any
) -> None:
    # Like add_middleware, the last one added is the outermost; EdgeApp puts them outside FastAPI's stack.
    add = app.add_edge_middleware
    add(outside_uploads(WafMiddleware), audit=audit, max_body_bytes=settings.max_body_bytes)
    add(
        RateLimitMiddleware,
        limiter=limiter,
        verifier=verifier,
        per_principal=settings.rate_limit_per_minute,
        per_ip=settings.rate_limit_ip_per_minute,
    )
    add(ContentTypeMiddleware, exempt_prefixes=(OBJECTS_PREFIX,))
    add(BodyLimits, max_bytes=settings.max_body_bytes, upload_bytes=settings.max_upload_bytes)
    add(
        BrowserCors,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=_CORS_HEADERS,
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )
    add(HttpMetricsMiddleware)
    add(RequestIdMiddleware)


class BrowserCors:
    """Starlette's CORSMiddleware for requests that carry an Origin header (browsers); others skip it.

    CORS only concerns browsers, and they always send Origin on cross-origin requests; for the rest the
    middleware would only add `Vary: Origin` to responses that carry no caching headers anyway.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(key == b"origin" for key, _ in scope["headers"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Router answers (404 unknown path, 405 wrong method) in the edge's JSON error shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, Code.UNKNOWN)
    return error_response(
        code, str(exc.detail), request_id_of(request.scope), headers=exc.headers, http_status=exc.status_code
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request.scope)
    log.error("edge: unhandled error", exc_info=exc, extra={"request_id": request_id})
    return error_response(Code.INTERNAL, f"internal error (request id {request_id})", request_id)
