"""The deploy service through gRPC, on a real grpc.aio server (port 0): embedded SQLite, folder object store,
generated or file signing keys. tests/live/test_deploy_vault.py covers Vault (OpenBao) transit."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2
from prometheus_client import REGISTRY

from launchpad.deploy.v1 import deploy_pb2, deploy_pb2_grpc
from services.core.audit import verify_chain
from services.core.interceptors import DETAILS_KEY
from services.core.server import Runtime
from services.deploy import wpk
from services.deploy.app import build
from services.deploy.servicer import BUCKET
from tests.support import make_token, metadata, running_service

DEV = make_token("alice", "acme", ("developer",))
VIEWER = make_token("victor", "acme", ("viewer",))
OTHER = make_token("olga", "globex", ("admin",))
SIGNING_ENV = ("VAULT_ADDR", "VAULT_TOKEN", "VAULT_TRANSIT_KEY", "COSIGN_KEY_PATH", "COSIGN_PASSWORD")
SIGNING_ENV += ("RUNTIME_AGENT_URL", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")


def sample_wpk(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "name": "nightly-etl",
        "version": version,
        "description": "load and report",
        "env": {"REGION": "eu"},
        "steps": [
            {"name": "extract", "run": "python extract.py", "timeout_s": 60},
            {"name": "publish", "uses": "launchpad/publish@v1", "with": {"bucket": "reports"}},
        ],
        **extra,
    }


def struct(document: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(document)
    return message


@dataclass
class Deploy:
    runtime: Runtime
    stub: deploy_pb2_grpc.DeployServiceStub
    data_dir: Path

    async def pack(self, document: dict[str, Any], token: str = DEV) -> deploy_pb2.PackWpkResponse:
        request = deploy_pb2.PackWpkRequest(wpk=struct(document))
        return await self.stub.PackWpk(request, metadata=metadata(token))

    async def sign(self, artifact_id: str, token: str = DEV) -> deploy_pb2.SignArtifactResponse:
        request = deploy_pb2.SignArtifactRequest(artifact=artifact_id)
        return await self.stub.SignArtifact(request, metadata=metadata(token))

    async def deploy(self, artifact_id: str, token: str = DEV) -> deploy_pb2.Deployment:
        request = deploy_pb2.DeployArtifactRequest(artifact_id=artifact_id)
        return (await self.stub.DeployArtifact(request, metadata=metadata(token))).deployment

    async def keys(self) -> list[deploy_pb2.PublicKey]:
        response = await self.stub.ListPublicKeys(deploy_pb2.ListPublicKeysRequest(), metadata=metadata())
        return list(response.keys)

    def object_file(self, sha256: str) -> Path:
        """The embedded store's file of an artifact (a 4 KiB header, then the bytes)."""
        [path] = [
            p
            for p in (self.data_dir / "buckets" / BUCKET / "objects").iterdir()
            if sha256.encode() in p.read_bytes()[:4096]
        ]
        return path

    def audit(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(line) for line in self.runtime.settings.process.audit_path.read_bytes().splitlines()
        ]


async def fails(awaitable: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    trailing = dict(error.trailing_metadata() or ())
    return orjson.loads(trailing[DETAILS_KEY])[0]


@pytest.fixture
def deploy_env(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Embedded everything: no Vault, no key file, no S3, in-process agent, whatever the shell exported."""
    for name in SIGNING_ENV:
        monkeypatch.delenv(name, raising=False)
    return settings_env


@pytest.fixture
async def svc(deploy_env: Path) -> AsyncIterator[Deploy]:
    async with running_service("deploy", build) as (runtime, channel):
        yield Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total", labels) or 0.0


# ------------------------------------------------------------------------------------------- end to end


async def test_pack_sign_deploy_end_to_end_with_audited_sha256(svc: Deploy) -> None:
    before = (counter("wpk_pack", outcome="ok"), counter("wpk_deploy", outcome="ok"))
    packed = await svc.pack(sample_wpk())
    expected = wpk.pack(sample_wpk())
    assert packed.sha256 == expected.sha256 and packed.size == len(expected.data)

    signed = await svc.sign(packed.artifact_id)
    assert signed.signed and signed.key_source == "embedded" and signed.sha256 == packed.sha256
    [key] = await svc.keys()
    assert key.key_id == signed.key_id and key.trusted and "BEGIN PUBLIC KEY" in key.public_key_pem

    deployment = await svc.deploy(packed.artifact_id)
    assert deployment.status == "succeeded" and deployment.reason == ""
    assert (deployment.name, deployment.version, deployment.sha256) == ("nightly-etl", "1.0.0", packed.sha256)
    assert deployment.tenant == "acme" and deployment.created_by == "alice"

    got = await svc.stub.GetDeployment(
        deploy_pb2.GetDeploymentRequest(deployment_id=deployment.deployment_id), metadata=metadata(DEV)
    )
    assert got.deployment == deployment
    artifact = (
        await svc.stub.GetArtifact(
            deploy_pb2.GetArtifactRequest(artifact_id=packed.artifact_id), metadata=metadata(DEV)
        )
    ).artifact
    assert artifact.signed and artifact.signature == signed.signature and artifact.key_source == "embedded"
    assert artifact.storage_path == f"{BUCKET}/acme/nightly-etl/1.0.0/{packed.sha256}.tar.gz"

    # The registry's versioned record and the embedded agent's execution are real rows.
    with sqlite3.connect(svc.data_dir / "platform.sqlite") as db:
        registry = db.execute("SELECT tenant, name, version, digest FROM deploy_workflows").fetchall()
        executions = db.execute("SELECT execution_id, digest FROM deploy_executions").fetchall()
    assert registry == [("acme", "nightly-etl", "1.0.0", packed.sha256)]
    assert executions == [(deployment.execution_id, f"sha256:{packed.sha256}")]

    events = {e["action"].rsplit("/", 1)[-1]: e for e in svc.audit() if "DeployService" in e["action"]}
    for action in ("PackWpk", "SignArtifact", "DeployArtifact"):
        assert events[action]["sha256"] == packed.sha256 and events[action]["outcome"] == "ok"
        assert events[action]["actor"] == "alice" and events[action]["tenant"] == "acme"
    assert verify_chain(svc.runtime.settings.process.audit_path).ok
    assert counter("wpk_pack", outcome="ok") == before[0] + 1
    assert counter("wpk_deploy", outcome="ok") == before[1] + 1


async def test_same_wpk_packs_to_the_same_sha256_and_artifact(svc: Deploy) -> None:
    first = await svc.pack(sample_wpk())
    # Key order and 60 vs 60.0 do not matter: the tarball holds canonical JSON.
    shuffled = dict(reversed(list(sample_wpk().items())))
    shuffled["steps"][0]["timeout_s"] = 60.0
    second = await svc.pack(shuffled)
    assert (second.sha256, second.size, second.artifact_id) == (first.sha256, first.size, first.artifact_id)
    other = await svc.pack(sample_wpk("1.0.1"))
    assert other.sha256 != first.sha256 and other.artifact_id != first.artifact_id
    listed = await svc.stub.ListArtifacts(deploy_pb2.ListArtifactsRequest(), metadata=metadata(DEV))
    assert sorted(a.artifact_id for a in listed.artifacts) == sorted([first.artifact_id, other.artifact_id])


async def test_validation_errors_name_each_violation(svc: Deploy) -> None:
    before = counter("wpk_pack", outcome="invalid")
    bad = {
        "name": "Bad Name",
        "version": "1.0",
        "owner": "x",
        "steps": [{"run": "ok"}, {"name": "a", "run": "x", "uses": "y"}, {"name": "a", "uses": "z"}],
    }
    error = await fails(svc.pack(bad), grpc.StatusCode.INVALID_ARGUMENT)
    assert details(error)["violations"] == [
        "wpk.owner is not a known field",
        "wpk.name must match ^[a-z0-9][a-z0-9._-]{0,63}$",
        "wpk.version must be a semantic version such as 1.0.0",
        "wpk.steps[0].name is required",
        "wpk.steps[1] must have exactly one of run or uses",
        "wpk.steps[2].name 'a' duplicates wpk.steps[1].name",
    ]
    assert "wpk.steps[0].name is required" in error.details()
    error = await fails(
        svc.pack({"name": "x", "version": "1.0.0", "steps": []}), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert details(error)["violations"] == ["wpk.steps must be a non-empty list"]
    assert counter("wpk_pack", outcome="invalid") == before + 2
    listed = await svc.stub.ListArtifacts(deploy_pb2.ListArtifactsRequest(), metadata=metadata(DEV))
    assert list(listed.artifacts) == []


# ------------------------------------------------------------------------------------------- refusals


async def _refused(svc: Deploy, artifact_id: str, sha256: str, reason: str) -> None:
    error = await fails(svc.deploy(artifact_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason in error.details()
    event = svc.audit()[-1]
    assert event["action"].endswith("DeployArtifact") and event["code"] == "FAILED_PRECONDITION"
    assert event["sha256"] == sha256 and reason in event["reason"]
    deployments = await svc.stub.ListDeployments(deploy_pb2.ListDeploymentsRequest(), metadata=metadata(DEV))
    assert deployments.deployments[0].status == "failed" and reason in deployments.deployments[0].reason
    with sqlite3.connect(svc.data_dir / "platform.sqlite") as db:
        assert db.execute("SELECT count(*) FROM deploy_workflows").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM deploy_executions").fetchone() == (0,)


async def test_deploy_refuses_an_unsigned_artifact(svc: Deploy) -> None:
    packed = await svc.pack(sample_wpk())
    await _refused(svc, packed.artifact_id, packed.sha256, "artifact is not signed")


async def test_deploy_refuses_bytes_altered_after_signing(svc: Deploy) -> None:
    packed = await svc.pack(sample_wpk())
    await svc.sign(packed.artifact_id)
    path = svc.object_file(packed.sha256)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01  # one bit of the gzip trailer
    path.write_bytes(bytes(raw))
    await _refused(svc, packed.artifact_id, packed.sha256, "stored bytes changed since packing")
    # Signing the altered bytes is refused too: the signature would vouch for the wrong content.
    error = await fails(svc.sign(packed.artifact_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert "do not match the recorded sha256" in error.details()


async def test_deploy_refuses_a_signature_by_a_key_that_is_no_longer_trusted(
    deploy_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed by the generated key; then the operator configures a cosign key: the old key is not trusted."""
    async with running_service("deploy", build) as (runtime, channel):
        first = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)
        packed = await first.pack(sample_wpk())
        assert (await first.sign(packed.artifact_id)).key_source == "embedded"
    key_path = tmp_path / "cosign.key"
    key_path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    monkeypatch.setenv("COSIGN_KEY_PATH", str(key_path))
    async with running_service("deploy", build) as (runtime, channel):
        second = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)
        assert [k.key_source for k in await second.keys()] == ["cosign-key"]
        await _refused(second, packed.artifact_id, packed.sha256, "signed by untrusted key sha256:")


async def test_live_mode_does_not_trust_the_generated_key(
    deploy_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMULATION_MODE", "false")  # nothing configured: every dependency is embedded
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)
        packed = await svc.pack(sample_wpk())
        signed = await svc.sign(packed.artifact_id)
        assert signed.key_source == "embedded"
        [key] = await svc.keys()
        assert not key.trusted
        await _refused(svc, packed.artifact_id, packed.sha256, "signed by untrusted key")


# ------------------------------------------------------------------------------------------- signatures


def _pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def openssl_verifies(
    tmp: Path, public_pem: str, signature_b64: str, data: bytes
) -> subprocess.CompletedProcess:
    (tmp / "key.pub").write_text(public_pem)
    (tmp / "sig.der").write_bytes(base64.b64decode(signature_b64))
    (tmp / "artifact.tar.gz").write_bytes(data)
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "key.pub", "-signature", "sig.der", "artifact.tar.gz"],
        cwd=tmp,
        capture_output=True,
        text=True,
        check=False,
    )


async def test_signature_verifies_with_openssl(svc: Deploy, tmp_path: Path) -> None:
    packed = await svc.pack(sample_wpk())
    signed = await svc.sign(packed.artifact_id)
    [key] = await svc.keys()
    data = wpk.pack(sample_wpk()).data  # reproducible: the same bytes the service stored
    assert hashlib.sha256(data).hexdigest() == packed.sha256
    result = openssl_verifies(tmp_path, key.public_key_pem, signed.signature, data)
    assert result.returncode == 0 and "Verified OK" in result.stdout
    tampered = openssl_verifies(tmp_path, key.public_key_pem, signed.signature, data + b"\0")
    assert tampered.returncode != 0 and "Verification failure" in tampered.stdout


async def test_a_password_protected_pem_key_file_signs(
    deploy_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "cosign.key").write_bytes(_pem(private, b"s3cret"))
    monkeypatch.setenv("COSIGN_KEY_PATH", str(tmp_path / "cosign.key"))
    monkeypatch.setenv("COSIGN_PASSWORD", "s3cret")
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)
        packed = await svc.pack(sample_wpk())
        signed = await svc.sign(packed.artifact_id)
        assert signed.key_source == "cosign-key"
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        result = openssl_verifies(tmp_path, public.decode(), signed.signature, wpk.pack(sample_wpk()).data)
        assert result.returncode == 0, result.stdout + result.stderr
        assert (await svc.deploy(packed.artifact_id)).status == "succeeded"
        mode = {d.name: d.mode for d in runtime.deps.all()}["signing"]
        assert mode == "live"


# ------------------------------------------------------------------------------------------- access


async def test_a_viewer_cannot_pack_sign_or_deploy(svc: Deploy) -> None:
    packed = await svc.pack(sample_wpk())
    await fails(svc.pack(sample_wpk("2.0.0"), VIEWER), grpc.StatusCode.PERMISSION_DENIED)
    await fails(svc.sign(packed.artifact_id, VIEWER), grpc.StatusCode.PERMISSION_DENIED)
    await fails(svc.deploy(packed.artifact_id, VIEWER), grpc.StatusCode.PERMISSION_DENIED)
    listed = await svc.stub.ListArtifacts(deploy_pb2.ListArtifactsRequest(), metadata=metadata(VIEWER))
    assert [a.artifact_id for a in listed.artifacts] == [packed.artifact_id]
    artifact = (
        await svc.stub.GetArtifact(
            deploy_pb2.GetArtifactRequest(artifact_id=packed.artifact_id), metadata=metadata(VIEWER)
        )
    ).artifact
    assert not artifact.signed  # the viewer's sign call changed nothing


async def test_tenants_see_only_their_own_artifacts_and_deployments(svc: Deploy) -> None:
    packed = await svc.pack(sample_wpk())
    await svc.sign(packed.artifact_id)
    deployment = await svc.deploy(packed.artifact_id)
    for call in (
        svc.sign(packed.artifact_id, OTHER),
        svc.deploy(packed.artifact_id, OTHER),
        svc.stub.GetArtifact(
            deploy_pb2.GetArtifactRequest(artifact_id=packed.artifact_id), metadata=metadata(OTHER)
        ),
        svc.stub.GetDeployment(
            deploy_pb2.GetDeploymentRequest(deployment_id=deployment.deployment_id), metadata=metadata(OTHER)
        ),
    ):
        await fails(call, grpc.StatusCode.NOT_FOUND)
    listed = await svc.stub.ListArtifacts(deploy_pb2.ListArtifactsRequest(), metadata=metadata(OTHER))
    deployments = await svc.stub.ListDeployments(
        deploy_pb2.ListDeploymentsRequest(), metadata=metadata(OTHER)
    )
    assert list(listed.artifacts) == [] and list(deployments.deployments) == []
    # The same package packed by the other tenant is its own artifact, stored under its own prefix.
    theirs = await svc.pack(sample_wpk(), OTHER)
    assert theirs.sha256 == packed.sha256 and theirs.artifact_id != packed.artifact_id
    await fails(svc.deploy(theirs.artifact_id, OTHER), grpc.StatusCode.FAILED_PRECONDITION)


# ------------------------------------------------------------------------------------------- runtime agent


class _Agent(http.server.BaseHTTPRequestHandler):
    calls: list[tuple[str, dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.path, body))
        answer = json.dumps({"execution_id": f"exec-{len(type(self).calls)}"}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def agent_url(deploy_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Agent]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    _Agent.calls, _Agent.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RUNTIME_AGENT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield _Agent
    finally:
        server.shutdown()
        server.server_close()


async def test_deploy_calls_the_runtime_agent_execute_endpoint(
    deploy_env: Path, agent_url: type[_Agent]
) -> None:
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), deploy_env)
        packed = await svc.pack(sample_wpk())
        await svc.sign(packed.artifact_id)
        deployment = await svc.deploy(packed.artifact_id)
        assert deployment.status == "succeeded" and deployment.execution_id == "exec-1"
        assert agent_url.calls == [
            (
                "/execute",
                {
                    "name": "nightly-etl",
                    "version": "1.0.0",
                    "digest": f"sha256:{packed.sha256}",
                    "artifact_id": packed.artifact_id,
                },
            )
        ]
        agent_url.status = 500
        error = await fails(svc.deploy(packed.artifact_id), grpc.StatusCode.FAILED_PRECONDITION)
        assert "runtime agent answered 500" in error.details()
        failed = await svc.stub.GetDeployment(
            deploy_pb2.GetDeploymentRequest(deployment_id=details(error)["deployment_id"]),
            metadata=metadata(DEV),
        )
        assert failed.deployment.status == "failed" and "500" in failed.deployment.reason


async def test_a_registered_version_keeps_its_digest(svc: Deploy) -> None:
    first = await svc.pack(sample_wpk())
    changed = await svc.pack(sample_wpk(description="same name and version, other content"))
    for packed in (first, changed):
        await svc.sign(packed.artifact_id)
    assert (await svc.deploy(first.artifact_id)).status == "succeeded"
    assert (await svc.deploy(first.artifact_id)).status == "succeeded"  # redeploying the same digest is fine
    error = await fails(svc.deploy(changed.artifact_id), grpc.StatusCode.FAILED_PRECONDITION)
    assert "nightly-etl 1.0.0 is already registered with digest" in error.details()
