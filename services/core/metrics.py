"""Prometheus metrics of the service kit (one registry per process, the client library's default)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPC_REQUESTS = Counter(
    "launchpad_rpc_requests_total", "RPCs served, by method and status code", ["service", "method", "code"]
)
RPC_SECONDS = Histogram(
    "launchpad_rpc_duration_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
AUTH_FAILURES = Counter(
    "launchpad_auth_failures_total", "Calls refused before the handler", ["service", "code"]
)


class MethodMetrics:
    """Pre-bound label children for one RPC: label lookups cost more than the increment itself."""

    def __init__(self, service: str, method: str) -> None:
        self._service, self._method = service, method
        self._seconds = RPC_SECONDS.labels(service, method)
        self._by_code: dict[str, Counter] = {}

    def observe(self, code: str, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._by_code[code] = RPC_REQUESTS.labels(self._service, self._method, code)
        counter.inc()
        self._seconds.observe(seconds)


def serve_metrics(host: str, port: int) -> None:
    """Serves /metrics over HTTP on its own thread (gRPC port + 1000 by convention)."""
    if port:
        start_http_server(port, addr=host)
