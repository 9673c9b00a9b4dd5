"""Counts every HTTP answer (including the middleware's 4xx) by route template, method and status."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "launchpad_edge_http_requests_total", "HTTP requests answered by the edge", ["route", "method", "status"]
)
HTTP_SECONDS = Histogram(
    "launchpad_edge_http_request_duration_seconds",
    "Time from request to the end of the response",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class HttpMetricsMiddleware:
    """Counts every HTTP answer (including the middleware's 4xx) by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded label values
            self._observe(_route_label(scope), method, status, time.perf_counter() - started)

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counter = self._counters.get((route, method, status))
        if counter is None:
            counter = self._counters[(route, method, status)] = HTTP_REQUESTS.labels(
                route, method, str(status)
            )
        counter.inc()
        timer = self._timers.get(route)
        if timer is None:
            timer = self._timers[route] = HTTP_SECONDS.labels(route)
        timer.observe(seconds)


def _route_label(scope: Scope) -> str:
    """The contract's path template for RPC routes, the route path otherwise; never the raw URL."""
    label = getattr(scope.get("endpoint"), "metrics_label", None)
    if label:
        return label
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
