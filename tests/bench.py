"""`make bench`: the stack against a direct gRPC stub and a FastAPI monolith doing the same work, in one run.

Throughput at 32 connections and p50/p99 latency, and p50 at 1 connection; wrk drives the HTTP targets, a
grpc.aio client with the same concurrency drives the stub. The monolith (tests/bench_monolith.py) verifies the
same tokens and runs the same SQL on the same kind of tenant file in one process; its answer must equal the
edge's. RSS of every stack process and of the monolith, after start-up and after the runs. Both topologies run
one after the other (split, then single), each on the SQLite default on its own uncommon ports with its own
data dir; the monolith is started beside each and measured in the same phase, so each ratio compares figures
taken under the same load of this shared, noisy machine. Ratios, not absolute numbers, are the targets.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.config import SERVICES
from services.launcher import ROOT, Stack

PASSWORD = "bench-password-123"
BASE_PORT = 18000
BASE_PORTS = {"split": BASE_PORT, "single": BASE_PORT + 200}  # no port of one stack lingers into the next
MONOLITH_OFFSET = 90  # the monolith's port above its topology's base
TOPOLOGIES = ("split", "single")
DURATION_S = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 32
ROUTE = "/api/data/query"
SQL_BODY = b'{"sql":"SELECT 1"}'


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float


@dataclass
class Rss:
    """Resident memory (MB) of one side, after start-up and after the runs."""

    name: str
    processes: int
    start_mb: float
    end_mb: float = 0.0


def stack_env(data_dir: Path, base_port: int = BASE_PORT, topology: str = "split") -> dict[str, str]:
    """The bench stacks' environment: embedded defaults, uncommon ports from base_port, no rate limits."""
    env = dict(os.environ)
    env.update(
        LAUNCHPAD_TOPOLOGY=topology,
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


def _query(url: str, token: str) -> dict:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, SQL_BODY, headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _check_answers(edge: dict, monolith: dict) -> None:
    """The baseline must answer what the stack answers: same JSON, apart from the time it took."""
    if edge.get("rows") != [[1]]:
        raise SystemExit(f"edge answered {edge!r} to SELECT 1, expected rows [[1]]")
    if _timeless(edge) != _timeless(monolith):
        raise SystemExit(
            f"the monolith's answer differs from the edge's:\n  edge     {edge}\n  monolith {monolith}"
        )


def _timeless(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "elapsed_ms"}


# --- resident memory ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for tasks in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in tasks.read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
    return found


def _vm_rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def rss(pids: Iterable[int]) -> tuple[int, float]:
    """(process count, MB) summed over the processes and all their descendants."""
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += _children(pid)
    return len(seen), sum(_vm_rss_kb(pid) for pid in seen) / 1024


def _stack_pids(stack: Stack) -> list[int]:
    """The stack's own processes: one per service and the edge (split), the one process (single); rss()
    adds their descendants."""
    return [proc.pid for proc in stack.procs.values()]


# --- load -----------------------------------------------------------------------------------------------

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


def _start_monolith(env: dict[str, str], edge: str, port: int) -> subprocess.Popen[bytes]:
    """One uvicorn process (uvloop, httptools), keys from the edge's JWKS, the stack's data dir and limits."""
    env = {**env, "MONOLITH_JWKS_URL": f"{edge}/api/auth/jwks", "PYTHONPATH": f"{ROOT / 'generated'}:{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.bench_monolith:app", "--port", str(port),
         "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    for _ in range(100):  # uvicorn listens once the app's start-up (the JWKS fetch) is done
        if proc.poll() is not None:
            raise SystemExit(f"the monolith exited with code {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the monolith did not start")


def _ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("installing wrk (Debian package) ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)


# --- the run --------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One topology's figures and the monolith's, measured in the same phase of the run."""

    topology: str
    many: list[Result]  # stack, direct stub, monolith at CONNECTIONS
    one: list[Result]  # the same at 1 connection
    memory: list[Rss]  # stack, monolith


def _measure(stack: Stack, monolith_url: str, token: str) -> tuple[list[Result], list[Result]]:
    edge_url, address, label = f"{stack.edge_url}{ROUTE}", stack.address("data"), f"stack ({stack.topology})"
    _wrk("warm-up", edge_url, token, CONNECTIONS, 2)
    _wrk("warm-up", monolith_url, token, CONNECTIONS, 2)
    many = [
        _wrk(label, edge_url, token, CONNECTIONS, DURATION_S),
        _direct("direct gRPC stub", address, token, CONNECTIONS, DURATION_S),
        _wrk("monolith", monolith_url, token, CONNECTIONS, DURATION_S),
    ]
    one = [
        _wrk(label, edge_url, token, 1, DURATION_S // 2),
        _direct("direct gRPC stub", address, token, 1, DURATION_S // 2),
        _wrk("monolith", monolith_url, token, 1, DURATION_S // 2),
    ]
    return many, one


def main() -> int:
    status = http_bench()
    from tests import bench_realtime  # imported here: it reuses this module's stack helpers

    realtime_status = bench_realtime.main()  # its own stacks (auth + realtime) and the bare websockets server
    from tests import bench_policies

    policies_status = bench_policies.main()  # the data service alone, governed and ungoverned tables
    return status or realtime_status or policies_status


def http_bench() -> int:
    """Each topology, the direct stub and the monolith on `SELECT 1`; 1 when a check misses its target."""
    _ensure_wrk()
    phases = [_phase(topology) for topology in TOPOLOGIES]
    return _report(phases)


def _phase(topology: str) -> Phase:
    """Starts the topology's stack and a monolith on its data dir, measures both, stops both."""
    base = BASE_PORTS[topology]
    data_dir = Path(tempfile.mkdtemp(prefix=f"launchpad-bench-{topology}-"))
    env = stack_env(data_dir, base, topology)
    output = open(data_dir / "stack.out", "wb")  # noqa: SIM115 -- one line per RPC: not on the terminal
    stack = Stack(env, output=output)
    print(f"starting the {topology} topology ...", flush=True)
    stack.start()
    monolith = None
    try:
        stack_rss = Rss(f"stack ({topology})", *rss(_stack_pids(stack)))
        token = login(stack.edge_url)
        edge_answer = _query(f"{stack.edge_url}{ROUTE}", token)
        port = base + MONOLITH_OFFSET
        monolith = _start_monolith(env, stack.edge_url, port)
        monolith_rss = Rss("monolith", *rss([monolith.pid]))
        monolith_url = f"http://127.0.0.1:{port}{ROUTE}"
        _check_answers(edge_answer, _query(monolith_url, token))
        many, one = _measure(stack, monolith_url, token)
        stack_rss.end_mb = rss(_stack_pids(stack))[1]
        monolith_rss.end_mb = rss([monolith.pid])[1]
    finally:
        if monolith is not None:
            monolith.terminate()
            monolith.wait()
        stack.stop()
        output.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return Phase(topology, many, one, [stack_rss, monolith_rss])


Check = tuple[str, float, str, bool]


def _checks(phase: Phase) -> list[Check]:
    """The issue's targets for this topology (ratios within its own phase)."""
    (edge, direct, monolith), (edge_1, direct_1, monolith_1) = phase.many, phase.one
    if phase.topology == "split":
        stub_ratio, stub_added = edge.rps / direct.rps, edge_1.p50_ms - direct_1.p50_ms
        return [
            ("edge / direct stub throughput", stub_ratio, ">= 0.90", stub_ratio >= 0.9),
            ("edge p50 - stub p50 at 1 conn (ms)", stub_added, "<= 0.30", stub_added <= 0.3),
        ]
    ratio, added, start_mb = (
        edge.rps / monolith.rps,
        edge_1.p50_ms - monolith_1.p50_ms,
        phase.memory[0].start_mb,
    )
    return [
        (f"stack / monolith throughput {CONNECTIONS} conn", ratio, ">= 0.80", ratio >= 0.8),
        ("stack p50 - monolith p50 1 conn (ms)", added, "<= 0.15", added <= 0.15),
        ("stack RSS after start-up (MB)", start_mb, "<= 250", start_mb <= 250),
    ]


def _report(phases: list[Phase]) -> int:
    query = f"POST {ROUTE} {SQL_BODY.decode()}"
    results: list[bool] = []
    for phase in phases:
        _print_phase(query, phase)
        checks = _checks(phase)
        print(f"checks ({phase.topology}):")
        for label, value, target, ok in checks:
            print(f"  {label:<38} {value:8.2f}  (target {target})  {'ok' if ok else 'MISSED'}")
        results += [ok for *_, ok in checks]
    return 0 if all(results) else 1


def _print_phase(query: str, phase: Phase) -> None:
    print(f"\n== {phase.topology} topology ==")
    print(f"{query} on the SQLite default, {CONNECTIONS} connections, {DURATION_S}s each")
    for r in phase.many:
        print(f"  {r.name:<17} {r.rps:9.0f} req/s   p50 {r.p50_ms:6.2f} ms   p99 {r.p99_ms:6.2f} ms")
    print(f"1 connection, {DURATION_S // 2}s each:")
    for r in phase.one:
        print(f"  {r.name:<17} {r.rps:9.0f} req/s   p50 {r.p50_ms:6.3f} ms   p99 {r.p99_ms:6.3f} ms")
    print("RSS (sum over the processes):  after start-up   after the runs")
    for m in phase.memory:
        label = f"{m.name}, {m.processes} process{'es' if m.processes > 1 else ''}"
        print(f"  {label:<28} {m.start_mb:9.0f} MB   {m.end_mb:9.0f} MB")
    (edge, direct, monolith), (edge_1, direct_1, monolith_1) = phase.many, phase.one
    print("ratios (all of them; the checks below are this topology's targets):")
    print(f"  stack / direct stub throughput at {CONNECTIONS} conn  {edge.rps / direct.rps:6.2f}x")
    print(f"  stack / monolith throughput at {CONNECTIONS} conn     {edge.rps / monolith.rps:6.2f}x")
    print(f"  stack p50 - stub p50 at 1 conn             {edge_1.p50_ms - direct_1.p50_ms:+6.3f} ms")
    print(f"  stack p50 - monolith p50 at 1 conn         {edge_1.p50_ms - monolith_1.p50_ms:+6.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
