"""AiService over gRPC: proto <-> domain only. The work is in assistant.py (sources, validation)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from launchpad.ai.v1 import ai_pb2, ai_pb2_grpc
from services.ai.assistant import Answer, Assistant
from services.ai.dataclient import DataService
from services.ai.llm import LlmClient
from services.core.context import current_call, current_principal
from services.core.deps import Mode, answers, select_mode
from services.core.errors import PermissionDenied
from services.core.server import Runtime, ServiceSpec

REMEDIATION = (
    "set OPENAI_KEY (and OPENAI_BASE_URL / OPENAI_MODEL for a local server such as Ollama or vLLM) to answer "
    "with a language model; the embedded generator covers common question shapes only"
)
HEALTH_RECHECK_S = 30.0  # a paid API is not pinged every health tick
_FORWARDED = ("x-request-id", "authorization")


def _caller_metadata(context: Any) -> tuple[tuple[str, str], ...]:
    """What the data service needs to act as the caller: their verified token and the request id."""
    metadata = dict(context.invocation_metadata() or ())
    return tuple((key, metadata[key]) for key in _FORWARDED if key in metadata)


def _deadline(context: Any) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _audit(answer_sql: str, source: str, **extra: Any) -> None:
    """The audit event names generated SQL by its hash, like the data service does (SQL may hold values)."""
    audit = current_call().audit
    audit["ai_source"] = source
    if answer_sql:
        audit["sql_sha256"] = hashlib.sha256(answer_sql.encode()).hexdigest()
    audit.update(extra)


def _response(answer: Answer) -> ai_pb2.QueryAiResponse:
    return ai_pb2.QueryAiResponse(
        sql=answer.sql,
        explanation=answer.explanation,
        source=answer.source,
        valid=answer.valid,
        reason=answer.reason,
        tables=list(answer.tables),
        repaired=answer.repaired,
    )


class AiServicer(ai_pb2_grpc.AiServiceServicer):
    def __init__(self, assistant: Assistant, data: DataService) -> None:
        self._assistant, self._data = assistant, data

    async def QueryAi(self, request: ai_pb2.QueryAiRequest, context: Any) -> ai_pb2.QueryAiResponse:
        if request.allow_writes and not current_principal().can_write:
            raise PermissionDenied("viewers cannot ask for write statements (allow_writes)")
        deadline = _deadline(context)
        db = self._data.as_caller(_caller_metadata(context), deadline)
        answer = await self._assistant.ask(
            db, request.question, allow_writes=request.allow_writes, deadline=deadline
        )
        _audit(answer.sql, answer.source, valid=answer.valid, repaired=answer.repaired)
        return _response(answer)

    async def SuggestSql(self, request: ai_pb2.SuggestSqlRequest, context: Any) -> ai_pb2.SuggestSqlResponse:
        deadline = _deadline(context)
        db = self._data.as_caller(_caller_metadata(context), deadline)
        found = await self._assistant.suggest(db, request.context, request.table, request.limit, deadline)
        _audit("", self._assistant.source, suggestions=len(found))
        return ai_pb2.SuggestSqlResponse(
            suggestions=[
                ai_pb2.Suggestion(sql=s.sql, explanation=s.explanation, source=s.source) for s in found
            ]
        )


def _throttled(check: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """The health check of a remote model: after a success, not asked again for HEALTH_RECHECK_S."""
    last_ok = -HEALTH_RECHECK_S

    async def run() -> None:
        nonlocal last_ok
        if time.monotonic() - last_ok < HEALTH_RECHECK_S:
            return
        await check()
        last_ok = time.monotonic()

    return run


async def open_model(runtime: Runtime) -> LlmClient | None:
    """The language model when OPENAI_KEY is set and it answers (DESIGN section 4's mode rule), else None."""
    settings = runtime.settings
    configured = bool(settings.ai.key) and settings.process.simulation_mode is not True
    model = (
        LlmClient(
            settings.ai.base_url,
            settings.ai.key.reveal(),
            settings.ai.model,
            settings.ai.timeout_ms / 1000,
        )
        if configured
        else None
    )
    reachable, why = await answers(model.ping) if model is not None else (False, "")
    mode = select_mode(settings.process.simulation_mode, configured, reachable)
    detail = f"OpenAI-compatible chat completions, model {settings.ai.model}"
    if mode is Mode.LIVE and model is not None:
        runtime.deps.add("llm", mode, settings.ai.base_url, detail=detail, check=_throttled(model.ping))
        if not reachable:
            runtime.deps.mark("llm", False, f"language model not answering (SIMULATION_MODE=false): {why}")
        return model
    if model is not None:
        await model.close()
    detail = (
        f"language model not answering at start-up: {why}"
        if mode is Mode.FALLBACK
        else "schema-aware generator"
    )
    runtime.deps.add("llm", mode, "", detail=detail, remediation=REMEDIATION)
    return None


async def build(runtime: Runtime) -> list[ServiceSpec]:
    model = await open_model(runtime)
    if model is not None:
        runtime.closers.append(model.close)
    data = DataService(runtime.settings.peers.address("data"))
    runtime.closers.append(data.close)
    descriptor = ai_pb2.DESCRIPTOR.services_by_name["AiService"]
    servicer = AiServicer(Assistant(model), data)
    return [ServiceSpec(descriptor, servicer, ai_pb2_grpc.add_AiServiceServicer_to_server)]
