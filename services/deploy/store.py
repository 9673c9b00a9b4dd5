"""Deploy's platform tables: artifacts, the workflow registry, deployments. Every read is per tenant."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from services.core.db import PlatformDb, Row, UniqueViolation
from services.core.errors import FailedPrecondition, NotFound


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class ArtifactRow:
    artifact_id: str
    tenant: str
    name: str
    version: str
    sha256: str
    size: int
    storage_path: str
    created_by: str
    created_at: int
    signature: str | None = None
    key_id: str | None = None
    key_source: str | None = None
    signed_by: str | None = None
    signed_at: int | None = None


@dataclass(frozen=True, slots=True)
class DeploymentRow:
    deployment_id: str
    tenant: str
    artifact_id: str
    name: str
    version: str
    sha256: str
    status: str
    reason: str
    execution_id: str
    created_by: str
    created_at: int


def _columns(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _values(row: Any) -> tuple[Any, ...]:
    return tuple(getattr(row, f.name) for f in fields(row))


def _placeholders(cls: type) -> str:
    return ", ".join("?" for _ in fields(cls))


class DeployStore:
    def __init__(self, db: PlatformDb) -> None:
        self.db = db

    async def add_artifact(self, row: ArtifactRow) -> ArtifactRow:
        """Inserts the artifact; the same bytes packed again by the tenant return the existing record."""
        sql = f"INSERT INTO deploy_artifacts ({_columns(ArtifactRow)}) VALUES ({_placeholders(ArtifactRow)})"
        try:
            await self.db.execute(sql, _values(row))
            return row
        except UniqueViolation:
            existing = await self.db.fetchone(
                f"SELECT {_columns(ArtifactRow)} FROM deploy_artifacts WHERE tenant = ? AND sha256 = ?",
                (row.tenant, row.sha256),
            )
            if existing is None:
                raise
            return ArtifactRow(**existing)

    async def artifact(self, tenant: str, artifact_id: str) -> ArtifactRow:
        row = await self.db.fetchone(
            f"SELECT {_columns(ArtifactRow)} FROM deploy_artifacts WHERE tenant = ? AND artifact_id = ?",
            (tenant, artifact_id),
        )
        if row is None:  # another tenant's id is indistinguishable from a missing one
            raise NotFound(f"artifact {artifact_id} not found", artifact_id=artifact_id)
        return ArtifactRow(**row)

    async def artifacts(self, tenant: str) -> list[ArtifactRow]:
        rows = await self.db.fetchall(
            f"SELECT {_columns(ArtifactRow)} FROM deploy_artifacts WHERE tenant = ?"
            " ORDER BY created_at DESC, artifact_id",
            (tenant,),
        )
        return [ArtifactRow(**row) for row in rows]

    async def record_signature(
        self, row: ArtifactRow, signature: str, key_id: str, key_source: str, signer: str
    ) -> None:
        await self.db.execute(
            "UPDATE deploy_artifacts SET signature = ?, key_id = ?, key_source = ?, signed_by = ?,"
            " signed_at = ? WHERE tenant = ? AND artifact_id = ?",
            (signature, key_id, key_source, signer, now_ms(), row.tenant, row.artifact_id),
        )

    async def register_workflow(self, row: ArtifactRow, actor: str) -> None:
        """The registry's versioned record; a version already registered with another digest is refused."""
        try:
            await self.db.execute(
                "INSERT INTO deploy_workflows (tenant, name, version, digest, artifact_id, created_by,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (row.tenant, row.name, row.version, row.sha256, row.artifact_id, actor, now_ms()),
            )
        except UniqueViolation:
            existing = await self.workflow(row.tenant, row.name, row.version)
            if existing is not None and existing["digest"] != row.sha256:
                raise FailedPrecondition(
                    f"workflow {row.name} {row.version} is already registered with digest"
                    f" sha256:{existing['digest']}; publish a new version",
                    sha256=row.sha256,
                ) from None

    async def workflow(self, tenant: str, name: str, version: str) -> Row | None:
        return await self.db.fetchone(
            "SELECT name, version, digest, artifact_id FROM deploy_workflows"
            " WHERE tenant = ? AND name = ? AND version = ?",
            (tenant, name, version),
        )

    async def add_deployment(self, row: DeploymentRow) -> DeploymentRow:
        await self.db.execute(
            f"INSERT INTO deploy_deployments ({_columns(DeploymentRow)})"
            f" VALUES ({_placeholders(DeploymentRow)})",
            _values(row),
        )
        return row

    async def deployment(self, tenant: str, deployment_id: str) -> DeploymentRow:
        row = await self.db.fetchone(
            f"SELECT {_columns(DeploymentRow)} FROM deploy_deployments"
            " WHERE tenant = ? AND deployment_id = ?",
            (tenant, deployment_id),
        )
        if row is None:
            raise NotFound(f"deployment {deployment_id} not found", deployment_id=deployment_id)
        return DeploymentRow(**row)

    async def deployments(self, tenant: str) -> list[DeploymentRow]:
        rows = await self.db.fetchall(
            f"SELECT {_columns(DeploymentRow)} FROM deploy_deployments WHERE tenant = ?"
            " ORDER BY created_at DESC, deployment_id",
            (tenant,),
        )
        return [DeploymentRow(**row) for row in rows]
