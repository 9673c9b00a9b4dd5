"""`make bench`: the edge against a direct gRPC stub and a plain FastAPI endpoint, side by side in one run.

Throughput at 32 connections and p50/p99 latency, and p50 at 1 connection; wrk drives the HTTP targets, a
grpc.aio client with the same concurrency drives the stub. The stack runs on the SQLite default on
uncommon ports. Ratios, not absolute numbers, are the targets: this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.config import SERVICES
from services.launcher import ROOT, Stack

PASSWORD = "bench-password-123"
BASE_PORT = 18000
PLAIN_PORT = BASE_PORT + 90
DURATION_S = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 32
SQL_BODY = b'{"sql":"SELECT 1"}'


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float


def stack_env(data_dir: Path, base_port: int = BASE_PORT) -> dict[str, str]:
    """The bench stacks' environment: embedded defaults, uncommon ports from base_port, no rate limits."""
    env = dict(os.environ)
    env.update(
        SIMULATION_MODE="true",
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
        LAUNCHPAD_EDGE_PORT=str(base_port + 1),
        LAUNCHPAD_RATE_LIMIT_PER_MINUTE="100000000",
        LAUNCHPAD_RATE_LIMIT_IP_PER_MINUTE="100000000",
    )
    for name, port in SERVICES.items():  # every built service on an uncommon port, beside `make up`
        env[f"LAUNCHPAD_{name.upper()}_PORT"] = str(base_port + port - 8000)
    return env


def login(edge: str) -> str:
    body = json.dumps({"username": "admin", "password": PASSWORD}).encode()
    request = urllib.request.Request(
        f"{edge}/auth/login", body, {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["token"]


def _check_edge_answer(edge: str, token: str) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(f"{edge}/api/data/query", SQL_BODY, headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        rows = json.load(response)["rows"]
    if rows != [[1]]:
        raise SystemExit(f"edge answered {rows!r} to SELECT 1, expected [[1]]")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(name: str, url: str, token: str, connections: int, seconds: int) -> Result:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{SQL_BODY.decode()}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{name}: non-2xx responses during the run:\n{out}")
    pct = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Result(name, rps, pct["50"], pct["99"])


async def _grpc_load(address: str, token: str, concurrency: int, seconds: int) -> tuple[float, list[float]]:
    metadata = (("x-request-id", "bench"), ("authorization", f"Bearer {token}"))
    request = data_pb2.QueryRequest(sql="SELECT 1")
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = data_pb2_grpc.DataServiceStub(channel)
        await stub.Query(request, metadata=metadata)  # warm-up and sanity
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                await stub.Query(request, metadata=metadata)
                latencies.append((time.perf_counter() - start) * 1e3)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def _direct(name: str, address: str, token: str, connections: int, seconds: int) -> Result:
    rps, latencies = asyncio.run(_grpc_load(address, token, connections, seconds))
    cuts = statistics.quantiles(latencies, n=100)
    return Result(name, rps, cuts[49], cuts[98])


def _start_plain(env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.bench_plain:app", "--port", str(PLAIN_PORT),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{PLAIN_PORT}/docs", timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("plain FastAPI endpoint did not start")


def _ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk (Debian package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)


def main() -> int:
    _ensure_wrk()
    data_dir = Path(tempfile.mkdtemp(prefix="launchpad-bench-"))
    env = stack_env(data_dir)
    output = open(data_dir / "stack.out", "wb")  # noqa: SIM115 -- one line per RPC: not on the terminal
    stack = Stack(env, output=output)
    stack.start()
    plain = _start_plain(env)
    try:
        edge = stack.edge_url
        token = login(edge)
        _check_edge_answer(edge, token)
        address = stack.address("data")
        plain_url = f"http://127.0.0.1:{PLAIN_PORT}/api/data/query"
        _wrk("warm-up", f"{edge}/api/data/query", token, CONNECTIONS, 2)
        _wrk("warm-up", plain_url, token, CONNECTIONS, 2)
        many = [
            _wrk("edge", f"{edge}/api/data/query", token, CONNECTIONS, DURATION_S),
            _direct("direct gRPC stub", address, token, CONNECTIONS, DURATION_S),
            _wrk("plain FastAPI", plain_url, token, CONNECTIONS, DURATION_S),
        ]
        one = [
            _wrk("edge", f"{edge}/api/data/query", token, 1, DURATION_S // 2),
            _direct("direct gRPC stub", address, token, 1, DURATION_S // 2),
        ]
    finally:
        plain.terminate()
        plain.wait()
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    status = _report(many, one)
    from tests import bench_realtime  # imported here: it reuses this module's stack helpers

    realtime_status = bench_realtime.main()  # its own stack (auth + realtime) and the bare websockets server
    from tests import bench_policies

    policies_status = bench_policies.main()  # the data service alone, governed and ungoverned tables
    return status or realtime_status or policies_status


def _report(many: list[Result], one: list[Result]) -> int:
    edge, direct, plain = many
    print(
        f'\nPOST /api/data/query {{"sql":"SELECT 1"}} on the SQLite default, {CONNECTIONS} connections, {DURATION_S}s each'
    )
    for r in many:
        print(f"  {r.name:<17} {r.rps:9.0f} req/s   p50 {r.p50_ms:6.2f} ms   p99 {r.p99_ms:6.2f} ms")
    print("1 connection:")
    for r in one:
        print(f"  {r.name:<17} {r.rps:9.0f} req/s   p50 {r.p50_ms:6.3f} ms   p99 {r.p99_ms:6.3f} ms")
    checks = [
        ("edge / direct stub throughput", edge.rps / direct.rps, ">= 0.80", edge.rps / direct.rps >= 0.8),
        ("edge / plain FastAPI throughput", edge.rps / plain.rps, ">= 0.70", edge.rps / plain.rps >= 0.7),
        ("edge p50 - stub p50 at 1 conn (ms)", one[0].p50_ms - one[1].p50_ms, "<= 0.30",
         one[0].p50_ms - one[1].p50_ms <= 0.3),
    ]  # fmt: skip
    print("ratios:")
    for label, value, target, ok in checks:
        print(f"  {label:<36} {value:6.2f}  (target {target})  {'ok' if ok else 'MISSED'}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
