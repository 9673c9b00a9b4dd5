"""The first slice as users run it: the built services and the edge as separate processes (the launcher
`make up` uses), over real HTTP only. Issue 6 extends this into the seed's full integration suite."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.auth.ratelimit import CLIENT_FACTOR
from services.core.config import SERVICES, load_settings
from services.launcher import Stack
from tests.conftest import ISOLATED
from tests.support import TOPOLOGIES, openssl_verifies, stored_object

PASSWORD = "integration-pw-1"
BASE_PORT = 28000
OTHER_CLIENT = "127.0.0.2"  # another client address on the loopback
LOGIN_LIMIT = 4  # failed logins per user and address a minute; an address gets CLIENT_FACTOR times that


@pytest.fixture(scope="module", params=TOPOLOGIES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp(f"stack-{request.param}")
    env = {k: v for k, v in os.environ.items() if k not in ISOLATED}
    env.update(
        LAUNCHPAD_TOPOLOGY=request.param,
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
        LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE=str(LOGIN_LIMIT),
        LAUNCHPAD_EDGE_PORT=str(BASE_PORT + 1),
        # every built service on an uncommon port, beside `make up`
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(BASE_PORT + port - 8000) for name, port in SERVICES.items()},
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{BASE_PORT + 1}",
    )
    running = Stack(env)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, timeout=15) as http:
        yield http


@pytest.fixture(scope="module")
def admin(client: httpx.Client) -> dict[str, str]:
    response = client.post("/auth/login", json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_gateway_health_reports_ok_and_env(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["env"] == "SIM"  # nothing configured: every dependency runs its embedded default
    assert {"data", "auth"} <= set(body["services"])


def test_select_one_is_exactly_one(client: httpx.Client, admin: dict[str, str]) -> None:
    response = client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [[1]]
    assert response.headers["x-request-id"]


def test_login_create_user_list_users(client: httpx.Client, admin: dict[str, str]) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/api/users",
        json={"username": name, "password": "long-enough-pw", "roles": ["viewer"]},
        headers=admin,
    )
    assert created.status_code == 200, created.text
    assert "password" not in created.text
    for path in ("/api/users", "/api/auth/users"):
        names = [u["username"] for u in client.get(path, headers=admin).json()["users"]]
        assert name in names
    token = client.post("/auth/login", json={"username": name, "password": "long-enough-pw"}).json()["token"]
    viewer = {"Authorization": f"Bearer {token}"}
    write = client.post("/api/data/query", json={"sql": "CREATE TABLE t (id int)"}, headers=viewer)
    assert write.status_code == 403, write.text


def test_policy_dry_run(client: httpx.Client, admin: dict[str, str]) -> None:
    policy = {
        "name": "owners",
        "rules": [
            {
                "effect": "allow",
                "actions": ["read"],
                "resource": "notes",
                "condition": {"record.owner": "$subject.sub"},
            }
        ],
    }
    body = {
        "policy": policy,
        "records": [{"owner": "admin"}, {"owner": "eve"}],
        "action": "read",
        "resource": "notes",
    }
    decisions = client.post("/api/policies/dryrun", json=body, headers=admin).json()["decisions"]
    assert [d["decision"] for d in decisions] == ["allow", "deny"]
    assert decisions[0]["rule_index"] == 0 and decisions[1]["rule_index"] == -1


def test_audit_log_records_the_calls(stack: Stack, client: httpx.Client, admin: dict[str, str]) -> None:
    client.post(
        "/api/data/query", json={"sql": "SELECT 2"}, headers={**admin, "x-request-id": "audit-probe-1"}
    )
    audit = Path(stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log"
    assert b'"request_id":"audit-probe-1"' in audit.read_bytes()
    from services.core.audit import verify_chain

    assert verify_chain(audit).ok


def test_unknown_token_and_no_token_are_401(client: httpx.Client) -> None:
    assert client.post("/api/data/query", json={"sql": "SELECT 1"}).status_code == 401
    bad = {"Authorization": "Bearer abc.def.ghi"}
    response = client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=bad)
    assert response.status_code == 401
    assert response.json()["code"] == 16


def test_wpk_pack_sign_deploy_through_the_edge(
    stack: Stack, client: httpx.Client, admin: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wpk = {"name": "etl-nightly", "version": "1.2.0", "steps": [{"name": "extract", "run": "echo hi"}]}
    packed = client.post("/api/wpk/pack", json={"wpk": wpk}, headers=admin)
    assert packed.status_code == 200, packed.text
    again = client.post("/api/wpk/pack", json={"wpk": wpk}, headers=admin).json()
    assert again["sha256"] == packed.json()["sha256"]  # reproducible: same WPK, same bytes
    artifact_id, sha256 = packed.json()["artifact_id"], packed.json()["sha256"]

    unsigned = client.post("/api/wpk/deploy", json={"artifact_id": artifact_id}, headers=admin)
    assert unsigned.status_code == 400 and "sign" in unsigned.json()["message"].lower()

    signed = client.post("/api/wpk/sign", json={"artifact": artifact_id}, headers=admin).json()
    assert signed["signed"] is True and signed["key_source"] == "embedded"
    deployed = client.post("/api/wpk/deploy", json={"artifact_id": artifact_id}, headers=admin)
    assert deployed.status_code == 200, deployed.text
    assert deployed.json()["deployment"]["status"] == "succeeded"

    # Anyone can verify the signature with openssl, from the public key the API publishes.
    key = next(k for k in client.get("/api/wpk/keys").json()["keys"] if k["key_id"] == signed["key_id"])
    artifact = client.get(f"/api/wpk/artifacts/{artifact_id}", headers=admin).json()["artifact"]
    monkeypatch.setenv("LAUNCHPAD_DATA_DIR", stack.env["LAUNCHPAD_DATA_DIR"])
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):  # the stack runs embedded
        monkeypatch.delenv(name, raising=False)
    blob = stored_object(artifact["storage_path"], load_settings("deploy"))
    assert hashlib.sha256(blob).hexdigest() == sha256
    assert openssl_verifies(tmp_path, key["public_key_pem"], signed["signature"], blob)

    audit = (Path(stack.env["LAUNCHPAD_DATA_DIR"]) / "audit.log").read_bytes()
    for action in ("PackWpk", "SignArtifact", "DeployArtifact"):
        assert any(action.encode() in line and sha256.encode() in line for line in audit.splitlines()), action


def fail_a_login(stack: Stack, request_id: str) -> None:
    """A failed login: the auth service logs it (a warning carrying the request id). Sent from 127.0.0.2 so it
    does not spend 127.0.0.1's failed-login budget, which test_failed_logins_... counts exactly."""
    transport = httpx.HTTPTransport(local_address=OTHER_CLIENT)
    with httpx.Client(base_url=stack.edge_url, transport=transport, timeout=15) as other:
        response = other.post(
            "/auth/login",
            json={"username": f"ghost-{uuid.uuid4().hex[:8]}", "password": "wrong-password"},
            headers={"x-request-id": request_id},
        )
    assert response.status_code == 401, response.text


def test_logs_query_finds_a_request_by_its_request_id(
    stack: Stack, client: httpx.Client, admin: dict[str, str]
) -> None:
    request_id = f"logs-probe-{uuid.uuid4().hex}"
    fail_a_login(stack, request_id)
    # level: the warning, not the RPC's own info line (every RPC leaves one)
    body = {"query": f'{{service="auth"}} |= "{request_id}"', "level": "warning", "limit": 10}
    deadline = time.monotonic() + 3  # services write their logs asynchronously
    while True:
        response = client.post("/api/logs/query", json=body, headers=admin)
        assert response.status_code == 200, response.text
        entries = response.json()["entries"]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.json()["mode"] == "embedded"
    assert [(e["request_id"], e["service"], e["level"], e["message"]) for e in entries] == [
        (request_id, "auth", "warning", "failed login")
    ]


def test_logs_query_with_an_unparseable_selector_is_400_with_the_position(
    client: httpx.Client, admin: dict[str, str]
) -> None:
    response = client.post("/api/logs/query", json={"query": '{service="auth"'}, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == 3 and "position 15:" in response.json()["message"]


async def test_logs_tail_websocket_receives_a_new_line(stack: Stack, admin: dict[str, str]) -> None:
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    token = admin["Authorization"].removeprefix("Bearer ")
    url = stack.edge_url.replace("http://", "ws://") + f"/ws/logs?token={token}&query={{service=%22auth%22}}"
    request_id = f"tail-probe-{uuid.uuid4().hex}"
    async with connect(url) as ws:
        await asyncio.sleep(1)  # the tail positions itself at the files' ends before it follows them
        await asyncio.to_thread(fail_a_login, stack, request_id)
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert "error" not in frame, frame
            if frame["entry"]["request_id"] == request_id:
                break
    assert (frame["entry"]["service"], frame["entry"]["message"]) == ("auth", "failed login")


def test_metrics_query_has_the_prometheus_shape(client: httpx.Client, admin: dict[str, str]) -> None:
    """No PROM_URL: synthetic series from the services' real counters (the admin's login was an auth RPC)."""
    query = 'launchpad_rpc_requests_total{service="auth", method=~".*Login"}'
    response = client.post("/api/metrics/query", json={"query": query}, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["synthetic"] is True
    assert body["data"]["resultType"] == "vector"
    result = body["data"]["result"]
    assert result and all(set(r) == {"metric", "value"} for r in result)
    assert {r["metric"]["__name__"] for r in result} == {"launchpad_rpc_requests_total"}
    assert {r["metric"]["job"] for r in result} == {"auth"}
    stamp, value = result[0]["value"]
    assert abs(stamp - time.time()) < 60 and float(value) >= 1


def test_failed_logins_are_limited_per_client_with_retry_after(client: httpx.Client) -> None:
    """Last in this module: it spends the client's failed-login budget (the edge forwards the client IP)."""
    statuses = []
    for i in range(CLIENT_FACTOR * LOGIN_LIMIT + 1):
        response = client.post("/auth/login", json={"username": f"nobody{i}", "password": "wrong-password"})
        statuses.append(response.status_code)
    assert statuses[:-1] == [401] * CLIENT_FACTOR * LOGIN_LIMIT
    assert statuses[-1] == 429
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["code"] == 8


def test_storage_signed_upload_and_download_through_the_edge(
    client: httpx.Client, admin: dict[str, str]
) -> None:
    health = client.get("/health").json()
    assert "storage" in str(health), health
    assert client.post("/api/storage/buckets", json={"name": "stack"}, headers=admin).status_code == 200
    data = os.urandom(3 * 1024 * 1024)  # over the 2 MB API body limit: the upload limit applies here
    put = client.post(
        "/api/storage/signed-url", json={"path": "stack/a/b.bin", "method": "PUT"}, headers=admin
    )
    assert put.status_code == 200, put.text
    assert put.json()["url"].startswith(f"http://127.0.0.1:{BASE_PORT + 1}/storage/v1/object/stack/a/b.bin?")
    assert client.put(put.json()["url"], content=data).status_code == 200
    get = client.post(
        "/api/storage/signed-url", json={"path": "stack/a/b.bin", "method": "GET"}, headers=admin
    )
    assert client.get(get.json()["url"]).content == data
    tampered = get.json()["url"].replace("sig=", "sig=f")
    refused = client.get(tampered)
    assert refused.status_code == 403 and refused.json()["code"] == 7


async def test_ws_realtime_subscribe_and_receive(stack: Stack, admin: dict[str, str]) -> None:
    """The seed's acceptance: a WebSocket to /ws/realtime through the edge, subscribe, receive."""
    import asyncio

    import orjson
    from websockets.asyncio.client import connect

    token = admin["Authorization"].removeprefix("Bearer ")
    url = stack.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={token}"

    async def until(ws: object, kind: str) -> dict:
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[attr-defined]
            if frame["type"] == kind:
                return frame

    async with connect(url) as sub, connect(url) as pub:
        await sub.send(orjson.dumps({"subscribe": "naksha.telemetry"}).decode())
        assert (await until(sub, "subscribed"))["topic"] == "naksha.telemetry"
        beat = await until(sub, "message")
        assert beat["synthetic"] is True and beat["message"]["kind"] == "heartbeat"

        await sub.send(orjson.dumps({"topic": "orders"}).decode())
        await until(sub, "subscribed")
        await pub.send(orjson.dumps({"publish": {"topic": "orders", "msg": {"id": 42}}}).decode())
        published = await until(pub, "published")
        while (got := await until(sub, "message"))["topic"] != "orders":
            pass  # heartbeats of the other topic interleave
        assert got["message"] == {"id": 42} and got["offset"] == published["offset"]


def test_health_names_the_topology_it_runs(stack: Stack, client: httpx.Client) -> None:
    assert client.get("/health").json()["topology"] == stack.topology
    processes = [name for name, _ in stack.processes()]
    assert processes == (["launchpad"] if stack.topology == "single" else [*stack.services, "edge"])
