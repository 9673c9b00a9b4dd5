"""Wires the runtime-deploy service: platform tables, object storage, signing key source, runtime agent."""

from __future__ import annotations

from pathlib import Path

from launchpad.deploy.v1 import deploy_pb2, deploy_pb2_grpc
from services.core.db import open_platform_db
from services.core.objectstore import open_object_store
from services.core.server import Runtime, ServiceSpec
from services.deploy.agent import HttpAgent, open_agent
from services.deploy.servicer import DeployServicer
from services.deploy.signing import VaultSigner, open_signer
from services.deploy.store import DeployStore

MIGRATIONS = Path(__file__).with_name("migrations")


async def build(runtime: Runtime) -> list[ServiceSpec]:
    settings = runtime.settings
    db = await open_platform_db(settings, runtime.deps, migrations=MIGRATIONS)
    runtime.closers.append(db.close)
    objects = await open_object_store(settings, runtime.deps)
    runtime.closers.append(objects.close)
    signer = await open_signer(settings, runtime.deps, runtime.log)
    if isinstance(signer, VaultSigner):
        runtime.closers.append(signer.close)
    agent = open_agent(db, runtime.deps, settings.process.simulation_mode, settings.peers.runtime_agent_url)
    if isinstance(agent, HttpAgent):
        runtime.closers.append(agent.close)
    runtime.log.info("wpk signing ready", extra={"key_source": signer.source})
    servicer = DeployServicer(DeployStore(db), objects, signer, agent)
    descriptor = deploy_pb2.DESCRIPTOR.services_by_name["DeployService"]
    return [ServiceSpec(descriptor, servicer, deploy_pb2_grpc.add_DeployServiceServicer_to_server)]
