"""The deploy service signing through Vault transit, against a real OpenBao (`bao server -dev`, transit on).

Needs VAULT_ADDR and VAULT_TOKEN (skipped when unset; LAUNCHPAD_REQUIRE_LIVE=1 makes that a failure). Each
test uses a transit key of its own, so the service's create-when-missing path runs every time.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import hvac
import pytest

from launchpad.deploy.v1 import deploy_pb2_grpc
from services.deploy import wpk
from services.deploy.app import build
from tests.services.test_deploy import Deploy, _refused, fails, openssl_verifies, sample_wpk
from tests.support import need_env, running_service

LIVE_VAULT = {name: os.environ.get(name, "") for name in ("VAULT_ADDR", "VAULT_TOKEN")}


@pytest.fixture
def vault_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """VAULT_ADDR/VAULT_TOKEN of the real server and a fresh transit key name; returns the key name."""
    addr = LIVE_VAULT["VAULT_ADDR"] or need_env("VAULT_ADDR")
    token = LIVE_VAULT["VAULT_TOKEN"] or need_env("VAULT_TOKEN")
    for name in ("COSIGN_KEY_PATH", "COSIGN_PASSWORD", "RUNTIME_AGENT_URL", "MINIO_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    key = f"wpk-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("VAULT_ADDR", addr)
    monkeypatch.setenv("VAULT_TOKEN", token)
    monkeypatch.setenv("VAULT_TRANSIT_KEY", key)
    return key


@pytest.fixture
async def svc(vault_env: str, settings_env: Path) -> AsyncIterator[Deploy]:
    async with running_service("deploy", build) as (runtime, channel):
        yield Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)


async def test_signs_through_transit_and_openssl_verifies(
    svc: Deploy, vault_env: str, tmp_path: Path
) -> None:
    deps = {d.name: d for d in svc.runtime.deps.all()}
    assert deps["signing"].mode == "live" and deps["signing"].healthy
    packed = await svc.pack(sample_wpk())
    signed = await svc.sign(packed.artifact_id)
    assert (signed.key_source, signed.key_id) == ("vault", f"vault:{vault_env}:v1")
    assert not signed.signature.startswith("vault:")  # the vault:vN: prefix is stripped, the version kept

    # The public key comes from the transit key's own info, as Vault reports it.
    client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
    info = client.secrets.transit.read_key(vault_env)["data"]
    assert info["type"] == "ecdsa-p256"
    [key] = await svc.keys()
    assert key.public_key_pem == info["keys"]["1"]["public_key"] and key.trusted

    data = wpk.pack(sample_wpk()).data
    result = openssl_verifies(tmp_path, key.public_key_pem, signed.signature, data)
    assert result.returncode == 0 and "Verified OK" in result.stdout
    # Vault agrees too.
    verdict = client.secrets.transit.verify_signed_data(
        vault_env,
        hash_input=base64.b64encode(hashlib.sha256(data).digest()).decode(),
        signature=f"vault:v1:{signed.signature}",
        hash_algorithm="sha2-256",
        prehashed=True,
        marshaling_algorithm="asn1",
    )
    assert verdict["data"]["valid"] is True

    deployment = await svc.deploy(packed.artifact_id)
    assert deployment.status == "succeeded"


async def test_after_rotation_old_and_new_versions_verify(svc: Deploy, vault_env: str) -> None:
    first = await svc.pack(sample_wpk())
    assert (await svc.sign(first.artifact_id)).key_id.endswith(":v1")
    client = hvac.Client(url=os.environ["VAULT_ADDR"], token=os.environ["VAULT_TOKEN"])
    client.secrets.transit.rotate_key(vault_env)
    second = await svc.pack(sample_wpk("1.0.1"))
    assert (await svc.sign(second.artifact_id)).key_id == f"vault:{vault_env}:v2"
    assert [k.key_id for k in await svc.keys()] == [f"vault:{vault_env}:v1", f"vault:{vault_env}:v2"]
    assert (await svc.deploy(first.artifact_id)).status == "succeeded"
    assert (await svc.deploy(second.artifact_id)).status == "succeeded"


async def test_live_mode_refuses_a_signature_by_the_embedded_key(
    vault_env: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAULT_ADDR")
    async with running_service("deploy", build) as (runtime, channel):  # no Vault: the generated key signs
        embedded = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)
        packed = await embedded.pack(sample_wpk())
        assert (await embedded.sign(packed.artifact_id)).key_source == "embedded"
    monkeypatch.setenv("VAULT_ADDR", LIVE_VAULT["VAULT_ADDR"])
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("deploy", build) as (runtime, channel):
        live = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)
        assert [k.key_source for k in await live.keys()] == ["vault"]
        await _refused(live, packed.artifact_id, packed.sha256, "signed by untrusted key sha256:")


async def test_vault_down_live_mode_is_unavailable_auto_mode_falls_back(
    vault_env: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)
        signing = {d.name: d for d in runtime.deps.all()}["signing"]
        assert signing.mode == "live" and not signing.healthy
        packed = await svc.pack(sample_wpk())
        error = await fails(svc.sign(packed.artifact_id), grpc.StatusCode.UNAVAILABLE)
        assert "Vault transit is not available" in error.details()
    monkeypatch.setenv("SIMULATION_MODE", "auto")
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)
        signing = {d.name: d for d in runtime.deps.all()}["signing"]
        assert signing.mode == "fallback" and "Vault not answering" in signing.detail
        assert (await svc.sign(packed.artifact_id)).key_source == "embedded"
