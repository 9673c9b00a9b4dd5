"""The seed's integration list (Phase F, "Tests (integration)"), against the whole stack as users run it.

Every built service and the edge run as separate processes on the documented ports (edge 8001, services
8011-8018, their /metrics on 9011-9018), started by the launcher `make up` uses, and are exercised over real
HTTP and WebSocket only. The module runs twice, one stack after the other on the same ports:

- "embedded": every dependency variable stripped, so each dependency runs its embedded default;
- "live": the real servers CI starts (tests.conftest.LIVE_ENV) with SIMULATION_MODE=false, so nothing may
  fall back unnoticed. Skipped when they are not configured, a failure under LAUNCHPAD_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from services.core.audit import verify_chain
from services.core.config import EDGE_PORT, METRICS_PORT_OFFSET, SERVICES, built_services
from services.launcher import Stack
from tests.conftest import LIVE_ENV
from tests.support import PrivateDatabase, need_env

PASSWORD = "endpoints-admin-pw-1"
DOCUMENTED_PORTS = (
    EDGE_PORT,
    *SERVICES.values(),
    *(port + METRICS_PORT_OFFSET for port in SERVICES.values()),
)
# Variables that would make a dependency live or move a port: none reaches the embedded run.
STRIPPED_PREFIXES = ("POSTGRES_", "REDIS_", "KAFKA_", "MINIO_", "VAULT_", "BAO_", "PROM_", "LOKI_", "OPENAI_")
STRIPPED_PREFIXES += ("COSIGN_", "RUNTIME_AGENT_", "LAUNCHPAD_", "SIMULATION_MODE")
# In the live run, these dependencies (service -> names) must be live; every other one embedded: there is
# no Loki, OpenAI endpoint or runtime agent to run here (their adapters have contract tests instead).
LIVE_DEPENDENCIES = {
    "data": {"sql"},
    "auth": {"sql"},
    "storage": {"objects", "sql"},  # sql: the tenant's policies, read from the platform database
    "deploy": {"sql", "objects", "signing"},
    "realtime": {
        "kafka",
        "sql",
    },  # KAFKA_URL wins over REDIS_URL for realtime; the edge's rate limits use Redis
    "metrics": {"prometheus"},
}
WAIT_S = 30  # an upper bound for eventual outcomes (a scrape, a log line), never a timed assertion


@dataclass
class Run:
    mode: str  # "embedded" or "live"
    stack: Stack

    @property
    def data_dir(self) -> Path:
        return Path(self.stack.env["LAUNCHPAD_DATA_DIR"])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_ports_free(timeout_s: float = 15) -> None:
    """The documented ports, free: the previous run's processes are gone and no `make up` is running
    (gRPC servers set SO_REUSEPORT, so a second stack would silently share ports with the first)."""
    deadline = time.monotonic() + timeout_s
    while busy := [port for port in DOCUMENTED_PORTS if listening(port)]:
        if time.monotonic() > deadline:
            pytest.fail(f"ports {busy} are in use: stop the Launchpad running there (make up?) and rerun")
        time.sleep(0.2)


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
    )
    return env


@pytest.fixture(scope="module", params=["embedded", "live"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    mode: str = request.param
    env = base_env(tmp_path_factory.mktemp(f"endpoints-{mode}"))
    database = None
    if mode == "live":
        live = {name: LIVE_ENV[name] or need_env(name) for name in LIVE_ENV}
        database = PrivateDatabase(live["POSTGRES_DSN"])
        env.update(live, POSTGRES_DSN=database.dsn, SIMULATION_MODE="false")
        env["VAULT_TRANSIT_KEY"] = f"lp-it-{uuid.uuid4().hex[:8]}"
    try:
        wait_ports_free()
        stack = Stack(env)
        stack.start()
        try:
            yield Run(mode, stack)
        finally:
            stack.stop()
            wait_ports_free()  # the next run binds the same ports
    finally:
        if database is not None:
            database.drop()


@pytest.fixture(scope="module")
def client(run: Run) -> Iterator[httpx.Client]:
    assert run.stack.edge_url == f"http://127.0.0.1:{EDGE_PORT}"
    with httpx.Client(base_url=run.stack.edge_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def token(client: httpx.Client) -> str:
    response = client.post("/auth/login", json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["token"]


@pytest.fixture(scope="module")
def admin(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def eventually(fetch: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    """fetch() until done(result) or WAIT_S passed; the caller asserts on the last result."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


# --- the seed's list ------------------------------------------------------------------------------------


def test_gateway_health_reports_the_modes(run: Run, client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == set(built_services())
    assert all(s["status"] == "SERVING" for s in body["services"].values()), body
    modes = {
        (service, dep["name"]): dep["mode"]
        for service, entry in body["services"].items()
        for dep in entry["dependencies"]
    }
    if run.mode == "embedded":
        assert set(modes.values()) == {"embedded"}, modes
        assert body["env"] == "SIM"
        return
    expected = {(s, name) for s, names in LIVE_DEPENDENCIES.items() for name in names}
    assert expected <= set(modes), f"missing dependencies: {expected - set(modes)}"
    for key, mode in modes.items():
        assert mode == ("live" if key in expected else "embedded"), (key, mode)
    unhealthy = [
        (s, d["name"], d["detail"])
        for s, e in body["services"].items()
        for d in e["dependencies"]
        if not d["healthy"]
    ]
    assert not unhealthy
    # "LIVE" only when nothing at all is embedded; Loki and the runtime agent are not available here.
    assert body["env"] == ("LIVE" if set(modes.values()) == {"live"} else "SIM")


def test_select_one_is_exactly_one(client: httpx.Client, admin: dict[str, str]) -> None:
    response = client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[1]]
    assert response.headers["x-request-id"]


def test_login_create_user_list_users(client: httpx.Client, token: str, admin: dict[str, str]) -> None:
    assert token.count(".") == 2  # a JWT from the login above
    name = f"it{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/api/users",
        json={"username": name, "password": "it-user-pw-123", "roles": ["developer"]},
        headers=admin,
    )
    assert created.status_code == 200, created.text
    assert "password" not in created.text
    for path in ("/api/users", "/api/auth/users"):
        listed = client.get(path, headers=admin)
        assert listed.status_code == 200, listed.text
        assert name in [user["username"] for user in listed.json()["users"]]
    login = client.post("/auth/login", json={"username": name, "password": "it-user-pw-123"})
    assert login.status_code == 200, login.text
    me = client.get("/api/auth/me", headers={"Authorization": f"Bearer {login.json()['token']}"})
    assert me.status_code == 200 and name in me.text, me.text


def tampered(url: str) -> str:
    """The URL with its signature changed (embedded: `sig`; S3: `X-Amz-Signature`)."""
    parts = urlsplit(url)
    query = [
        (k, ("0" if v[0] != "0" else "1") + v[1:]) if k in ("sig", "X-Amz-Signature") else (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_storage_signed_url_upload_then_download(
    run: Run, client: httpx.Client, admin: dict[str, str]
) -> None:
    bucket = f"it-{uuid.uuid4().hex[:8]}"
    assert client.post("/api/storage/buckets", json={"name": bucket}, headers=admin).status_code == 200
    data = f"hello from the {run.mode} run\n".encode() * 100
    put = client.post(
        "/api/storage/signed-url", json={"path": f"{bucket}/a/b.txt", "method": "PUT"}, headers=admin
    )
    assert put.status_code == 200, put.text
    url = put.json()["url"]
    # embedded: served by the edge itself; live: S3's own presigned URL, straight to the S3 server
    s3 = run.stack.env.get("MINIO_ENDPOINT", "").split("://")[-1].rstrip("/")
    where = s3 if run.mode == "live" else f"127.0.0.1:{EDGE_PORT}"
    assert urlsplit(url).netloc == where, url
    headers = put.json().get("headers", {})  # S3 signs the owner and content type as headers: send them back
    assert client.put(tampered(url), content=data, headers=headers).status_code == 403  # really checked
    assert client.put(url, content=data, headers=headers).status_code == 200
    get = client.post(
        "/api/storage/signed-url", json={"path": f"{bucket}/a/b.txt", "method": "GET"}, headers=admin
    )
    assert get.status_code == 200, get.text
    downloaded = client.get(get.json()["url"])
    assert downloaded.status_code == 200 and downloaded.content == data


def audit_events(run: Run) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (run.data_dir / "audit.log").read_bytes().splitlines()]


def test_wpk_pack_sign_deploy_with_audit_entries(
    run: Run, client: httpx.Client, admin: dict[str, str]
) -> None:
    wpk = {
        "name": f"it-{uuid.uuid4().hex[:6]}",
        "version": "1.0.0",
        "steps": [{"name": "hello", "run": "echo hi"}],
    }
    packed = client.post("/api/wpk/pack", json={"wpk": wpk}, headers=admin)
    assert packed.status_code == 200, packed.text
    artifact_id, sha256 = packed.json()["artifact_id"], packed.json()["sha256"]
    unsigned = client.post("/api/wpk/deploy", json={"artifact_id": artifact_id}, headers=admin)
    assert unsigned.status_code == 400, unsigned.text  # deploy verifies the signature first

    signed = client.post("/api/wpk/sign", json={"artifact": artifact_id}, headers=admin)
    assert signed.status_code == 200, signed.text
    assert signed.json()["signed"] is True
    assert signed.json()["key_source"] == ("vault" if run.mode == "live" else "embedded")
    deployed = client.post("/api/wpk/deploy", json={"artifact_id": artifact_id}, headers=admin)
    assert deployed.status_code == 200, deployed.text
    deployment = deployed.json()["deployment"]
    assert deployment["status"] == "succeeded"
    listed = client.get("/api/wpk/deployments", headers=admin).json()["deployments"]
    assert deployment["deployment_id"] in [d["deployment_id"] for d in listed]

    events = [e for e in audit_events(run) if e.get("sha256") == sha256]
    outcomes = [(e["action"].rsplit("/", 1)[-1], e["outcome"]) for e in events]
    for action in ("PackWpk", "SignArtifact", "DeployArtifact"):
        assert (action, "ok") in outcomes, outcomes
    assert all(e["actor"] == "admin" and e["tenant"] == "default" for e in events)
    assert verify_chain(run.data_dir / "audit.log").ok


async def until(
    ws: ClientConnection, kinds: tuple[str, ...] | str, check: Callable[[dict[str, Any]], bool] = bool
) -> dict[str, Any]:
    """The next frame of one of `kinds` that passes `check` (heartbeats of other topics interleave), within
    WAIT_S in all."""
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    deadline = time.monotonic() + WAIT_S
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        assert frame["type"] != "error", frame
        if frame["type"] in kinds and check(frame):
            return frame


async def test_ws_realtime_subscribe_and_receive(run: Run, token: str) -> None:
    url = run.stack.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={token}"
    topic = f"it.{uuid.uuid4().hex[:8]}"
    async with connect(url) as ws, httpx.AsyncClient(base_url=run.stack.edge_url, timeout=30) as http:
        await ws.send(orjson.dumps({"subscribe": "naksha.telemetry"}).decode())
        assert (await until(ws, "subscribed"))["topic"] == "naksha.telemetry"
        beat = await until(ws, "message", lambda f: f["topic"] == "naksha.telemetry")
        assert beat["synthetic"] is True and beat["message"]["kind"] == "heartbeat"

        await ws.send(orjson.dumps({"subscribe": topic}).decode())
        await until(ws, "subscribed", lambda f: f["topic"] == topic)
        published = await http.post(
            "/api/realtime/publish",
            json={"topic": topic, "msg": {"mode": run.mode, "n": 1}},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert published.status_code == 200, published.text
        got = await until(ws, "message", lambda f: f["topic"] == topic)
        assert got["message"] == {"mode": run.mode, "n": 1}
        assert int(got["offset"]) == int(published.json()["offset"])

        await ws.send(orjson.dumps({"publish": {"topic": topic, "msg": {"n": 2}}}).decode())
        # The echo of our own message and the "published" acknowledgement may come in either order.
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < 2:
            frame = await until(ws, ("published", "message"), lambda f: f["topic"] == topic)
            seen[frame["type"]] = frame
        assert seen["message"]["message"] == {"n": 2}
        assert int(seen["message"]["offset"]) == int(seen["published"]["offset"])


@pytest.fixture(scope="module")
def orders(client: httpx.Client, admin: dict[str, str]) -> int:
    """A small table in the admin's tenant for the AI to see; returns its row count."""
    statements = [
        "CREATE TABLE orders (id integer primary key, customer text, amount integer)",
        "INSERT INTO orders VALUES (1, 'ada', 30), (2, 'bob', 12), (3, 'ada', 7)",
    ]
    for sql in statements:
        response = client.post("/api/data/query", json={"sql": sql}, headers=admin)
        assert response.status_code == 200, response.text
    return 3


def test_ai_sql_suggestion(client: httpx.Client, admin: dict[str, str], orders: int) -> None:
    response = client.post(
        "/api/ai/sql/suggest", json={"context": "SELECT * FROM ord", "table": "orders"}, headers=admin
    )
    assert response.status_code == 200, response.text
    suggestions = response.json()["suggestions"]
    assert suggestions and all(s["sql"].strip() and s["source"] == "embedded" for s in suggestions)
    assert any("orders" in s["sql"].lower() for s in suggestions), suggestions


def test_ai_query_returns_sql_that_runs(client: httpx.Client, admin: dict[str, str], orders: int) -> None:
    response = client.post("/api/ai/query", json={"question": "how many orders are there?"}, headers=admin)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["valid"] is True and answer["source"] == "embedded", answer
    assert "orders" in answer["tables"]
    ran = client.post("/api/data/query", json={"sql": answer["sql"]}, headers=admin)
    assert ran.status_code == 200, ran.text
    assert ran.json()["rows"] == [[orders]]


def test_logs_query_finds_a_request_by_its_id(client: httpx.Client, admin: dict[str, str]) -> None:
    request_id = f"it-logs-{uuid.uuid4().hex}"
    failed = client.post(
        "/auth/login",
        json={"username": f"ghost{uuid.uuid4().hex[:8]}", "password": "wrong-password"},
        headers={"x-request-id": request_id},
    )
    assert failed.status_code == 401
    body = {"query": f'{{service="auth"}} |= "{request_id}"', "limit": 10}
    response = eventually(  # services write their logs asynchronously: both lines, the warning and the RPC's
        lambda: client.post("/api/logs/query", json=body, headers=admin),
        lambda r: r.status_code != 200 or len(r.json()["entries"]) >= 2,
    )
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "embedded"  # no Loki in either run
    entries = response.json()["entries"]
    assert {(e["request_id"], e["service"]) for e in entries} == {(request_id, "auth")}
    messages = sorted(e["message"] for e in entries)
    assert messages[0].startswith("/launchpad.auth.v1.AuthService/Login UNAUTHENTICATED ")  # the RPC's line
    assert messages[1:] == ["failed login"]
    # Every RPC leaves one line, in the caller's tenant: a query finds its own request.
    query_id = f"it-logs-{uuid.uuid4().hex}"
    ok = client.post("/api/data/query", json={"sql": "SELECT 1"}, headers={**admin, "x-request-id": query_id})
    assert ok.status_code == 200
    body = {"query": f'{{service="data"}} |= "{query_id}"', "limit": 10}
    found = eventually(
        lambda: client.post("/api/logs/query", json=body, headers=admin),
        lambda r: r.status_code != 200 or r.json()["entries"],
    )
    assert [(e["request_id"], e["level"]) for e in found.json()["entries"]] == [(query_id, "info")]
    assert found.json()["entries"][0]["message"].startswith("/launchpad.data.v1.DataService/Query OK ")


def test_metrics_query(run: Run, client: httpx.Client, admin: dict[str, str]) -> None:
    """Embedded: synthetic series from the services' counters. Live: Prometheus, which CI has scrape the
    documented /metrics ports, so the auth service's counters arrive after a scrape or two."""
    body = {"query": 'launchpad_rpc_requests_total{service="auth"}'}
    response = eventually(
        lambda: client.post("/api/metrics/query", json=body, headers=admin),
        lambda r: r.status_code != 200 or r.json()["data"]["result"],
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "success" and answer["synthetic"] is (run.mode == "embedded")
    assert answer["data"]["resultType"] == "vector"
    result = answer["data"]["result"]
    assert result, f"no series for {body['query']} (does Prometheus scrape 127.0.0.1:9012?)"
    assert {r["metric"]["__name__"] for r in result} == {"launchpad_rpc_requests_total"}
    assert {r["metric"]["service"] for r in result} == {"auth"}
    assert sum(float(r["value"][1]) for r in result) >= 1
