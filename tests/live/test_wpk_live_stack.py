"""Issue 3 in CI against real servers, as processes over real HTTP: PostgreSQL for metadata, SeaweedFS (S3)
for the artifact bytes, OpenBao transit for signing, and openssl verifying a signature made through the edge."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.core.config import load_settings
from services.launcher import Stack
from tests.conftest import LIVE_ENV
from tests.support import need_env, openssl_verifies, stored_object

PASSWORD = "live-stack-pw-1"
BASE_PORT = 29000
LIVE = ("POSTGRES_DSN", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "VAULT_ADDR", "VAULT_TOKEN")


@pytest.fixture(scope="module")
def live_env() -> dict[str, str]:
    return {name: LIVE_ENV[name] or need_env(name) for name in LIVE}


@pytest.fixture(scope="module")
def stack(live_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("live-stack")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "KAFKA_URL", "COSIGN_KEY_PATH", "RUNTIME_AGENT_URL")
    }
    env.update(live_env)
    env.update(
        SIMULATION_MODE="false",  # every configured dependency live, or the service is not serving
        VAULT_TRANSIT_KEY=f"lp-live-{uuid.uuid4().hex[:8]}",
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{BASE_PORT + 1}",
        LAUNCHPAD_EDGE_PORT=str(BASE_PORT + 1),
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(BASE_PORT + port) for name, port in
           (("data", 11), ("auth", 12), ("storage", 13), ("deploy", 14))},
    )  # fmt: skip
    running = Stack(env, services=["data", "auth", "storage", "deploy"])
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.edge_url, timeout=30) as http:
        token = http.post("/auth/login", json={"username": "admin", "password": PASSWORD}).json()["token"]
        http.headers["Authorization"] = f"Bearer {token}"
        yield http


def test_health_is_live_for_every_dependency(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok", body  # env stays "SIM": the runtime agent is the in-process one here
    modes = {
        d["name"]: d["mode"] for s in body["services"].values() for d in s["dependencies"] if d["required"]
    }
    assert set(modes.values()) == {"live"}, modes


def test_pack_sign_deploy_live_and_openssl_verifies(
    client: httpx.Client, live_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wpk = {
        "name": f"live-{uuid.uuid4().hex[:6]}",
        "version": "0.1.0",
        "steps": [{"name": "run", "run": "true"}],
    }
    packed = client.post("/api/wpk/pack", json={"wpk": wpk})
    assert packed.status_code == 200, packed.text
    artifact_id, sha256 = packed.json()["artifact_id"], packed.json()["sha256"]
    signed = client.post("/api/wpk/sign", json={"artifact": artifact_id}).json()
    assert signed["signed"] is True and signed["key_source"] == "vault", signed
    deployed = client.post("/api/wpk/deploy", json={"artifact_id": artifact_id})
    assert deployed.status_code == 200 and deployed.json()["deployment"]["status"] == "succeeded", (
        deployed.text
    )

    artifact = client.get(f"/api/wpk/artifacts/{artifact_id}").json()["artifact"]
    for name, value in live_env.items():
        monkeypatch.setenv(name, value)
    blob = stored_object(artifact["storage_path"], load_settings("deploy"))  # the bytes live in SeaweedFS
    assert hashlib.sha256(blob).hexdigest() == sha256
    key = next(k for k in client.get("/api/wpk/keys").json()["keys"] if k["key_id"] == signed["key_id"])
    assert openssl_verifies(tmp_path, key["public_key_pem"], signed["signature"], blob)
