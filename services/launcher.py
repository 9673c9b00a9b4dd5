"""`make up`: every built service and the edge as separate processes, healthy before we say so.

Ctrl-C (or SIGTERM) stops them all: SIGTERM first (each drains in-flight calls), SIGKILL after a grace period.
Also used by `make bench` and the integration tests through `Stack`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.config import built_services, load_settings

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 8.0


@dataclass
class Stack:
    env: dict[str, str]
    services: list[str] = field(default_factory=built_services)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    output: Any = None  # where the processes' stdout/stderr go (a file, subprocess.DEVNULL); None: inherited

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**self.env, "LAUNCHPAD_BACKENDS": ",".join(self.services)}
        env["PYTHONPATH"] = f"{ROOT / 'generated'}:{ROOT}"
        # auth first: every other process fetches its JWKS to verify tokens.
        for name in self.services:
            self.procs[name] = self._spawn(f"services.{name}", env)
        self.procs["edge"] = self._spawn("edge", env)
        try:
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", module]
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=self.output, stderr=self.output)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.services)
        while pending:
            self.check_alive()
            pending = {name for name in pending if not _grpc_serving(self.address(name))}
            if time.monotonic() > deadline:
                raise TimeoutError(f"not SERVING after {timeout_s:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(0.2)
        while not _http_ok(f"{self.edge_url}/health"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"edge not healthy after {timeout_s:.0f}s")
            time.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} (see reports/logs/{name}.log)")

    def address(self, name: str) -> str:
        return _settings(self.env, name).peers.address(name)

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{_settings(self.env, 'edge').process.port}"

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _settings(env: dict[str, str], name: str):
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings(name)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _grpc_serving(address: str) -> bool:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            return response.status == health_pb2.HealthCheckResponse.SERVING

    try:
        return asyncio.run(check())
    except grpc.aio.AioRpcError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def main() -> int:
    stack = Stack(dict(os.environ))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Both explicitly: a shell that starts us in the background makes us inherit SIGINT as ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start()
    except (TimeoutError, RuntimeError) as exc:
        print(f"launchpad: {exc}", file=sys.stderr)
        return 1
    _print_ready(stack)
    try:
        while not stopping:
            stack.check_alive()
            time.sleep(0.5)
    except RuntimeError as exc:
        print(f"launchpad: {exc}", file=sys.stderr)
    finally:
        print("launchpad: stopping...", file=sys.stderr)
        stack.stop()
    return 0


def _print_ready(stack: Stack) -> None:
    settings = _settings(stack.env, "edge")
    lines = [
        f"Launchpad is up. Edge: {stack.edge_url}  (docs {stack.edge_url}/docs, health {stack.edge_url}/health)"
    ]
    for name in stack.services:
        address = stack.address(name)
        port = int(address.rsplit(":", 1)[1])
        lines.append(f"  {name:<9} gRPC {address}   metrics http://127.0.0.1:{port + 1000}/metrics")
    password_file = settings.process.data_dir / "auth" / "initial-admin-password"
    if password_file.exists():
        lines.append(f"  first admin: user 'admin', password in {password_file}")
    lines.append(f"  logs: {settings.process.log_dir}/<service>.log   audit: {settings.process.audit_path}")
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
