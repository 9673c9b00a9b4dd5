"""The deploy service's metadata on real PostgreSQL (schema launchpad): records, idempotent pack, registry."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest

from launchpad.deploy.v1 import deploy_pb2_grpc
from services.deploy.app import build
from tests.services.test_deploy import SIGNING_ENV, Deploy, sample_wpk
from tests.support import make_token, running_service


async def test_pack_sign_deploy_records_land_in_postgresql(
    pg_dsn: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SIGNING_ENV:
        monkeypatch.delenv(name, raising=False)
    tenant = f"t{uuid.uuid4().hex[:12]}"  # the shared database may hold other runs' rows
    token = make_token("pat", tenant, ("developer",))
    async with running_service("deploy", build) as (runtime, channel):
        svc = Deploy(runtime, deploy_pb2_grpc.DeployServiceStub(channel), settings_env)
        assert {d.name: d.mode for d in runtime.deps.all()}["sql"] == "live"
        packed = await svc.pack(sample_wpk(), token)
        again = await svc.pack(sample_wpk(), token)  # the unique (tenant, sha256) path on PostgreSQL
        assert again.artifact_id == packed.artifact_id
        await svc.sign(packed.artifact_id, token)
        deployment = await svc.deploy(packed.artifact_id, token)
    with psycopg2.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT sha256, key_source, signature IS NOT NULL FROM launchpad.deploy_artifacts WHERE tenant = %s",
            (tenant,),
        )
        assert cur.fetchall() == [(packed.sha256, "embedded", True)]
        cur.execute(
            "SELECT name, version, digest FROM launchpad.deploy_workflows WHERE tenant = %s", (tenant,)
        )
        assert cur.fetchall() == [("nightly-etl", "1.0.0", packed.sha256)]
        cur.execute(
            "SELECT status, execution_id FROM launchpad.deploy_deployments WHERE deployment_id = %s",
            (deployment.deployment_id,),
        )
        assert cur.fetchall() == [("succeeded", deployment.execution_id)]
    conn.close()
