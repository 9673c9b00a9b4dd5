"""The single topology as users run it: `python -m services.single`, the edge and every built service in one
process, over real HTTP and gRPC only; beside it a split stack (services.launcher.Stack, a process each)
answering the same requests the same way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.core.config import built_services
from services.launcher import ROOT, Stack
from tests.integration.stacks import stack_env

PASSWORD = "single-pw-1"
SINGLE_BASE, SPLIT_BASE = 36700, 36750  # edge base+1, services base+11..18, /metrics 1000 above those
VOLATILE = {"elapsed_ms", "request_id", "ts", "prev"}  # differ between any two runs of a request


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `python -m services.single` process, watched through a Stack (its health waits and stop)."""
    env = {
        **stack_env(tmp_path_factory.mktemp("single"), SINGLE_BASE, PASSWORD),
        "LAUNCHPAD_TOPOLOGY": "single",
    }
    env["PYTHONPATH"] = f"{ROOT / 'generated'}:{ROOT}"
    running = Stack(env)
    command = [sys.executable, "-m", "services.single"]
    running.procs["single"] = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        running.wait_healthy(60)
    except BaseException:
        running.stop()
        raise
    yield running
    running.stop()


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(stack_env(tmp_path_factory.mktemp("split"), SPLIT_BASE, PASSWORD))
    running.start()
    yield running
    running.stop()


def login(stack: Stack) -> dict[str, str]:
    response = httpx.post(
        f"{stack.edge_url}/auth/login", json={"username": "admin", "password": PASSWORD}, timeout=15
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(scope="module")
def client(single: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=single.edge_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
def admin(single: Stack) -> dict[str, str]:
    return login(single)


def test_one_process_and_its_rss_after_start(single: Stack) -> None:
    pid = single.procs["single"].pid
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == pid]
    assert children == []
    rss_kb = int(next(line for line in _status(pid) if line.startswith("VmRSS:")).split()[1])
    print(f"single topology RSS after start: {rss_kb / 1024:.0f} MB (VmRSS of pid {pid}; target <= 250 MB)")
    assert rss_kb < 250 * 1024


def _status(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/status").read_text().splitlines()


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


async def _health_and_reflection(address: str) -> tuple[int, list[str]]:
    async with grpc.aio.insecure_channel(address) as channel:
        checked = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=3
        )
        names = [s.name async for r in stream for s in r.list_services_response.service]
    return checked.status, names


@pytest.mark.parametrize("name", built_services())
def test_every_grpc_port_serves_health_reflection_and_its_metrics(
    single: Stack, admin: dict[str, str], name: str
) -> None:
    status, names = asyncio.run(_health_and_reflection(single.address(name)))
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert any(n.startswith(f"launchpad.{name}.") for n in names), names
    assert {"grpc.health.v1.Health", "launchpad.api.v1.StatusService"} <= set(names)
    port = int(single.address(name).rsplit(":", 1)[1]) + 1000
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "process_resident_memory_bytes" in text
    labelled = [line for line in text.splitlines() if line.startswith("launchpad_rpc_requests_total{")]
    assert all(f'service="{name}"' in line for line in labelled), labelled  # its own series, no other's


def test_each_service_counts_its_own_status_calls(single: Stack) -> None:
    httpx.get(f"{single.edge_url}/health", timeout=5)  # one GetStatus to every service
    for name in built_services():
        port = int(single.address(name).rsplit(":", 1)[1]) + 1000
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert f'method="/launchpad.api.v1.StatusService/GetStatus",service="{name}"' in text, name


def test_metrics_query_sees_each_series_once_under_its_job(
    client: httpx.Client, admin: dict[str, str]
) -> None:
    query = 'launchpad_rpc_requests_total{service="auth", method=~".*Login"}'
    response = client.post("/api/metrics/query", json={"query": query}, headers=admin)
    assert response.status_code == 200, response.text
    assert {r["metric"]["job"] for r in response.json()["data"]["result"]} == {"auth"}


def test_health_reports_the_topology_and_every_backend(single: Stack, split: Stack) -> None:
    for stack, topology in ((single, "single"), (split, "split")):
        body = httpx.get(f"{stack.edge_url}/health", timeout=5).json()
        assert (body["status"], body["topology"]) == ("ok", topology)
        assert set(body["services"]) == set(built_services())
        assert {s["status"] for s in body["services"].values()} == {"SERVING"}


def test_login_and_select_one(client: httpx.Client, admin: dict[str, str]) -> None:
    response = client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[1]]


async def test_realtime_publish_reaches_a_subscriber(single: Stack, admin: dict[str, str]) -> None:
    """Both sockets ride the edge's relay, one bidirectional in-process stream to realtime."""
    from websockets.asyncio.client import connect

    token = admin["Authorization"].removeprefix("Bearer ")
    url = single.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={token}"

    async def until(ws: Any, kind: str) -> dict[str, Any]:
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame["type"] == kind:
                return frame

    async with connect(url) as sub, connect(url) as pub:
        await sub.send(orjson.dumps({"subscribe": "orders"}).decode())
        await until(sub, "subscribed")
        await pub.send(orjson.dumps({"publish": {"topic": "orders", "msg": {"id": 42}}}).decode())
        published = await until(pub, "published")
        got = await until(sub, "message")
        assert (got["topic"], got["message"], got["offset"]) == ("orders", {"id": 42}, published["offset"])


def test_object_upload_and_download_through_signed_urls(client: httpx.Client, admin: dict[str, str]) -> None:
    """Upload: a client stream in process; download: a server stream (3 MB is many chunks either way)."""
    assert client.post("/api/storage/buckets", json={"name": "single"}, headers=admin).status_code == 200
    data = os.urandom(3 * 1024 * 1024)
    put = client.post(
        "/api/storage/signed-url", json={"path": "single/a.bin", "method": "PUT"}, headers=admin
    )
    assert put.status_code == 200, put.text
    assert client.put(put.json()["url"], content=data).status_code == 200
    get = client.post(
        "/api/storage/signed-url", json={"path": "single/a.bin", "method": "GET"}, headers=admin
    )
    assert client.get(get.json()["url"]).content == data


def _answer(stack: Stack, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = httpx.request(method, f"{stack.edge_url}{path}", timeout=15, **kwargs)
    try:
        body: Any = {k: v for k, v in response.json().items() if k not in VOLATILE}
    except ValueError:
        body = response.text
    return response.status_code, body


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/api/data/query", {"json": {"sql": "SELECT 1"}}),
        (
            "POST",
            "/api/data/query",
            {"json": {"sql": "SELECT 1"}, "headers": {"Authorization": "Bearer a.b.c"}},
        ),
        ("GET", "/api/data/tables?sql=1%20UNION%20SELECT%202", {}),
    ],
    ids=["no-token-401", "bad-token-401", "waf-403"],
)
def test_refusals_are_identical_in_both_topologies(
    single: Stack, split: Stack, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    answers = {
        name: _answer(stack, method, path, **kwargs) for name, stack in (("single", single), ("split", split))
    }
    assert answers["single"] == answers["split"]
    assert answers["single"][0] in (401, 403)


def _entries(path: Path, request_id: str) -> list[dict[str, Any]]:
    """JSON lines of a file carrying the request id (its writers are asynchronous: wait a little)."""
    deadline = time.monotonic() + 3
    while True:
        found = [orjson.loads(line) for line in path.read_bytes().splitlines() if request_id.encode() in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _stable(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry without what differs between two runs (times, hashes, ids, measured durations)."""
    kept = {k: v for k, v in entry.items() if k not in VOLATILE}
    if "message" in kept:
        kept["message"] = (
            kept["message"].rsplit(" ", 2)[0] if kept["message"].endswith(" ms") else kept["message"]
        )
    return kept


def test_a_request_leaves_the_same_answer_audit_and_log_line(single: Stack, split: Stack) -> None:
    seen = {}
    for name, stack in (("single", single), ("split", split)):
        request_id = f"same-{name}-{uuid.uuid4().hex[:8]}"
        headers = {**login(stack), "x-request-id": request_id}
        answer = _answer(stack, "POST", "/api/data/query", json={"sql": "SELECT 1 AS one"}, headers=headers)
        data_dir = Path(stack.env["LAUNCHPAD_DATA_DIR"])
        audit = [_stable(e) for e in _entries(data_dir / "audit.log", request_id)]
        logged = [_stable(e) for e in _entries(data_dir / "logs" / "data.log", request_id)]
        assert logged, f"{name}: no data.log line with {request_id}"
        seen[name] = (answer, audit, logged)
    assert seen["single"] == seen["split"]
    answer, audit, logged = seen["single"]
    assert answer[0] == 200 and answer[1]["rows"] == [[1]]
    assert [(e["service"], e["action"], e["code"]) for e in audit] == [
        ("data", "/launchpad.data.v1.DataService/Query", "OK")
    ]
    assert [(e["service"], e["logger"], e["code"]) for e in logged] == [("data", "launchpad.rpc", "OK")]


def test_calls_inside_the_process_open_no_connection_to_its_grpc_ports(
    single: Stack, client: httpx.Client, admin: dict[str, str]
) -> None:
    """Edge -> data, the JWKS fetches, /health's checks: all in process, so the process holds no TCP connection
    it opened to one of its own gRPC ports (a grpc.aio channel would keep one per backend)."""
    assert client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin).status_code == 200
    assert client.get("/health").status_code == 200
    ports = {int(single.address(name).rsplit(":", 1)[1]) for name in built_services()}
    assert _connections_to(single.procs["single"].pid, ports) == []


def _connections_to(pid: int, ports: set[int]) -> list[str]:
    """Established TCP connections of `pid` whose remote end is one of `ports` (/proc/net/tcp*)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if state == "01" and inode in inodes and remote_port in ports:
                found.append(line)
    return found


def test_sigterm_stops_it_with_exit_code_0(single: Stack) -> None:
    """Last: it ends the module's single process."""
    proc = single.procs["single"]
    rss_kb = int(next(line for line in _status(proc.pid) if line.startswith("VmRSS:")).split()[1])
    print(f"single topology RSS after this module's requests: {rss_kb / 1024:.0f} MB")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    print(f"single topology stopped {time.monotonic() - started:.1f} s after SIGTERM")
