"""The container's health check (Dockerfile HEALTHCHECK; compose waits on it): exit 0 healthy, 1 not.

A gRPC service is healthy when its grpc.health.v1 answers SERVING on its port (NOT_SERVING while a required
dependency is down). The edge is healthy when it answers GET /metrics: its /health is 503 while any backend
is down, and that must not mark the edge itself unhealthy (its other routes keep working).
Which process this container runs: LAUNCHPAD_SERVICE (set from the image's SERVICE build arg).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.config import ConfigError, load_settings

TIMEOUT_S = 3.0


def grpc_serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    service = os.environ.get("LAUNCHPAD_SERVICE", "")
    try:
        port = load_settings(service).process.port
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if service == "edge":
        healthy = http_ok(f"http://127.0.0.1:{port}/metrics")
    else:
        healthy = grpc_serving(f"127.0.0.1:{port}")
    if not healthy:
        print(f"healthcheck: {service} on port {port} is not healthy", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
