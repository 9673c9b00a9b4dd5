"""The runtime agent that executes deployed workflows: POST <RUNTIME_AGENT_URL>/execute, or in-process.

Wire format (both directions JSON): request {name, version, digest, artifact_id}; the answer carries the
execution id as `execution_id` (or `id`). Embedded: an in-process agent that records each execution in the
platform table deploy_executions and answers with its id.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import httpx

from services.core.db import PlatformDb
from services.core.deps import Mode, Registry

AGENT_TIMEOUT_S = 30.0


class AgentError(Exception):
    """The agent refused or failed the execution; the message says why."""


@dataclass(frozen=True, slots=True)
class Execution:
    tenant: str
    name: str
    version: str
    digest: str
    artifact_id: str


class Agent(Protocol):
    async def execute(self, job: Execution) -> str: ...


class HttpAgent:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=AGENT_TIMEOUT_S)

    async def execute(self, job: Execution) -> str:
        body = {
            "name": job.name,
            "version": job.version,
            "digest": job.digest,
            "artifact_id": job.artifact_id,
        }
        try:
            answer = await self._client.post(f"{self.url}/execute", json=body)
        except httpx.HTTPError as exc:
            raise AgentError(f"runtime agent not reachable: {exc!r}") from exc
        if answer.status_code >= 300:
            raise AgentError(f"runtime agent answered {answer.status_code}: {answer.text[:200]}")
        try:
            reply = answer.json()
            execution_id = str(reply.get("execution_id") or reply.get("id") or "")
        except (ValueError, AttributeError):
            execution_id = ""
        if not execution_id:
            raise AgentError("runtime agent answered without an execution id")
        return execution_id

    async def ping(self) -> None:
        await self._client.get(self.url)  # any HTTP answer means the agent is up

    async def close(self) -> None:
        await self._client.aclose()


class EmbeddedAgent:
    def __init__(self, db: PlatformDb) -> None:
        self._db = db

    async def execute(self, job: Execution) -> str:
        execution_id = str(uuid.uuid4())
        await self._db.execute(
            "INSERT INTO deploy_executions (execution_id, tenant, name, version, digest, artifact_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (execution_id, job.tenant, job.name, job.version, job.digest, job.artifact_id, _now_ms()),
        )
        return execution_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def open_agent(db: PlatformDb, deps: Registry, simulation: bool | None, url: str) -> Agent:
    """RUNTIME_AGENT_URL (not required for serving: a failed execution is recorded as such), else embedded."""
    if url and simulation is not True:
        agent = HttpAgent(url)
        deps.add("runtime-agent", Mode.LIVE, url, required=False, detail="HTTP /execute", check=agent.ping)
        return agent
    remediation = "set RUNTIME_AGENT_URL to the runtime agent"
    deps.add("runtime-agent", Mode.EMBEDDED, "in-process", required=False, remediation=remediation)
    return EmbeddedAgent(db)
