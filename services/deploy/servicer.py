"""DeployService: pack -> sign -> deploy of workflow packages, plus the read RPCs. Tenant from the token."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter

from launchpad.deploy.v1 import deploy_pb2, deploy_pb2_grpc
from services.core.context import current_call, current_principal
from services.core.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError
from services.core.objects import ObjectStore
from services.deploy import wpk
from services.deploy.agent import Agent, AgentError, Execution
from services.deploy.signing import PublicKey, Signer
from services.deploy.store import ArtifactRow, DeploymentRow, DeployStore, now_ms

BUCKET = "launchpad-artifacts"
CONTENT_TYPE = "application/gzip"

PACKS = Counter("wpk_pack_total", "WPK pack calls by outcome", ["outcome"])
SIGNS = Counter(
    "wpk_sign_total", "Artifact signing calls by outcome and key source", ["outcome", "key_source"]
)
DEPLOYS = Counter("wpk_deploy_total", "Artifact deploy calls by outcome", ["outcome"])


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, InvalidArgument):
        return "invalid"
    if isinstance(exc, FailedPrecondition):
        return "refused"
    if isinstance(exc, NotFound):
        return "not_found"
    return "error"


def _timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def artifact_message(row: ArtifactRow) -> deploy_pb2.Artifact:
    return deploy_pb2.Artifact(
        artifact_id=row.artifact_id,
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        size=row.size,
        tenant=row.tenant,
        created_by=row.created_by,
        created_at=_timestamp(row.created_at),
        storage_path=row.storage_path,
        signed=bool(row.signature),
        signature=row.signature or "",
        key_id=row.key_id or "",
        key_source=row.key_source or "",
    )


def deployment_message(row: DeploymentRow) -> deploy_pb2.Deployment:
    return deploy_pb2.Deployment(
        deployment_id=row.deployment_id,
        artifact_id=row.artifact_id,
        name=row.name,
        version=row.version,
        sha256=row.sha256,
        status=row.status,
        reason=row.reason,
        execution_id=row.execution_id,
        tenant=row.tenant,
        created_by=row.created_by,
        created_at=_timestamp(row.created_at),
    )


class DeployServicer(deploy_pb2_grpc.DeployServiceServicer):
    def __init__(self, store: DeployStore, objects: ObjectStore, signer: Signer, agent: Agent) -> None:
        self._store, self._objects, self._signer, self._agent = store, objects, signer, agent

    # --- pack ------------------------------------------------------------------------------------------

    async def PackWpk(self, request: deploy_pb2.PackWpkRequest, context: Any) -> deploy_pb2.PackWpkResponse:
        try:
            row = await self._pack(json_format.MessageToDict(request.wpk))
        except ServiceError as exc:
            PACKS.labels(_outcome(exc)).inc()
            raise
        PACKS.labels("ok").inc()
        return deploy_pb2.PackWpkResponse(artifact_id=row.artifact_id, sha256=row.sha256, size=row.size)

    async def _pack(self, document: dict[str, Any]) -> ArtifactRow:
        principal = current_principal()
        package = wpk.pack(document)
        current_call().audit["sha256"] = package.sha256
        key = f"{principal.tenant}/{package.name}/{package.version}/{package.sha256}.tar.gz"
        await self._objects.ensure_bucket(BUCKET)
        await self._objects.put(BUCKET, key, package.data, CONTENT_TYPE)
        row = ArtifactRow(
            artifact_id=str(uuid.uuid4()),
            tenant=principal.tenant,
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            size=len(package.data),
            storage_path=f"{BUCKET}/{key}",
            created_by=principal.subject,
            created_at=now_ms(),
        )
        row = await self._store.add_artifact(row)
        current_call().audit["artifact_id"] = row.artifact_id
        return row

    # --- sign ------------------------------------------------------------------------------------------

    async def SignArtifact(
        self, request: deploy_pb2.SignArtifactRequest, context: Any
    ) -> deploy_pb2.SignArtifactResponse:
        try:
            response = await self._sign(request.artifact)
        except ServiceError as exc:
            SIGNS.labels(_outcome(exc), self._signer.source).inc()
            raise
        SIGNS.labels("ok", response.key_source).inc()
        return response

    async def _sign(self, artifact_id: str) -> deploy_pb2.SignArtifactResponse:
        principal = current_principal()
        row = await self._artifact(principal.tenant, artifact_id)
        data = await self._bytes(row)
        digest = hashlib.sha256(data).digest()
        if digest.hex() != row.sha256:
            raise FailedPrecondition(
                f"artifact {row.artifact_id}: stored bytes do not match the recorded sha256; not signing",
                sha256=row.sha256,
            )
        signature = await self._signer.sign(digest)
        current_call().audit["key_id"] = signature.key_id
        await self._store.record_signature(
            row, signature.signature, signature.key_id, signature.key_source, principal.subject
        )
        return deploy_pb2.SignArtifactResponse(
            signed=True,
            signature=signature.signature,
            key_id=signature.key_id,
            key_source=signature.key_source,
            sha256=row.sha256,
        )

    # --- deploy ----------------------------------------------------------------------------------------

    async def DeployArtifact(
        self, request: deploy_pb2.DeployArtifactRequest, context: Any
    ) -> deploy_pb2.DeployArtifactResponse:
        try:
            deployment = await self._deploy(request.artifact_id)
        except ServiceError as exc:
            DEPLOYS.labels(_outcome(exc)).inc()
            raise
        DEPLOYS.labels("ok").inc()
        return deploy_pb2.DeployArtifactResponse(deployment=deployment_message(deployment))

    async def _deploy(self, artifact_id: str) -> DeploymentRow:
        principal = current_principal()
        row = await self._artifact(principal.tenant, artifact_id)
        reason = await self._refusal(row)
        if reason:
            await self._record(row, "failed", reason, "")
            current_call().audit["reason"] = reason
            raise FailedPrecondition(f"artifact {row.artifact_id} refused: {reason}", sha256=row.sha256)
        await self._store.register_workflow(row, principal.subject)
        job = Execution(row.tenant, row.name, row.version, f"sha256:{row.sha256}", row.artifact_id)
        try:
            execution_id = await self._agent.execute(job)
        except AgentError as exc:
            failed = await self._record(row, "failed", str(exc), "")
            raise FailedPrecondition(
                f"deployment {failed.deployment_id} failed: {exc}", deployment_id=failed.deployment_id
            ) from exc
        return await self._record(row, "succeeded", "", execution_id)

    async def _refusal(self, row: ArtifactRow) -> str:
        """Why the artifact may not run ("" when it may): unsigned, tampered, or not signed by a trusted key."""
        if not row.signature or not row.key_id:
            return "artifact is not signed"
        data = await self._bytes(row)
        actual = hashlib.sha256(data).hexdigest()
        if actual != row.sha256:
            return f"stored bytes changed since packing (sha256 {actual}, recorded {row.sha256})"
        keys = {key.key_id: key for key in await self._signer.public_keys()}
        key = keys.get(row.key_id)
        if key is None or not key.trusted:
            return f"signed by untrusted key {row.key_id} ({row.key_source})"
        if not key.verifies(row.signature, data):
            return f"signature does not verify against trusted key {row.key_id}"
        return ""

    async def _record(self, row: ArtifactRow, status: str, reason: str, execution_id: str) -> DeploymentRow:
        principal = current_principal()
        deployment = DeploymentRow(
            deployment_id=str(uuid.uuid4()),
            tenant=row.tenant,
            artifact_id=row.artifact_id,
            name=row.name,
            version=row.version,
            sha256=row.sha256,
            status=status,
            reason=reason,
            execution_id=execution_id,
            created_by=principal.subject,
            created_at=now_ms(),
        )
        current_call().audit["deployment_id"] = deployment.deployment_id
        return await self._store.add_deployment(deployment)

    # --- reads -----------------------------------------------------------------------------------------

    async def ListArtifacts(
        self, request: deploy_pb2.ListArtifactsRequest, context: Any
    ) -> deploy_pb2.ListArtifactsResponse:
        rows = await self._store.artifacts(current_principal().tenant)
        return deploy_pb2.ListArtifactsResponse(artifacts=[artifact_message(row) for row in rows])

    async def GetArtifact(
        self, request: deploy_pb2.GetArtifactRequest, context: Any
    ) -> deploy_pb2.GetArtifactResponse:
        row = await self._artifact(current_principal().tenant, request.artifact_id)
        return deploy_pb2.GetArtifactResponse(artifact=artifact_message(row))

    async def ListDeployments(
        self, request: deploy_pb2.ListDeploymentsRequest, context: Any
    ) -> deploy_pb2.ListDeploymentsResponse:
        rows = await self._store.deployments(current_principal().tenant)
        return deploy_pb2.ListDeploymentsResponse(deployments=[deployment_message(row) for row in rows])

    async def GetDeployment(
        self, request: deploy_pb2.GetDeploymentRequest, context: Any
    ) -> deploy_pb2.GetDeploymentResponse:
        if not request.deployment_id:
            raise InvalidArgument("deployment_id is required")
        row = await self._store.deployment(current_principal().tenant, request.deployment_id)
        return deploy_pb2.GetDeploymentResponse(deployment=deployment_message(row))

    async def ListPublicKeys(
        self, request: deploy_pb2.ListPublicKeysRequest, context: Any
    ) -> deploy_pb2.ListPublicKeysResponse:
        keys: list[PublicKey] = await self._signer.public_keys()
        return deploy_pb2.ListPublicKeysResponse(
            keys=[
                deploy_pb2.PublicKey(
                    key_id=k.key_id, key_source=k.key_source, public_key_pem=k.pem, trusted=k.trusted
                )
                for k in keys
            ]
        )

    # --- helpers ---------------------------------------------------------------------------------------

    async def _artifact(self, tenant: str, artifact_id: str) -> ArtifactRow:
        if not artifact_id:
            raise InvalidArgument("artifact id is required")
        row = await self._store.artifact(tenant, artifact_id)
        current_call().audit["sha256"] = row.sha256
        current_call().audit["artifact_id"] = row.artifact_id
        return row

    async def _bytes(self, row: ArtifactRow) -> bytes:
        bucket, _, key = row.storage_path.partition("/")
        try:
            return await self._objects.get(bucket, key)
        except NotFound:
            raise FailedPrecondition(
                f"artifact {row.artifact_id}: stored bytes are missing ({row.storage_path})",
                sha256=row.sha256,
            ) from None
