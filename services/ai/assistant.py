"""The assistant: a source writes SQL (the configured language model, else the embedded generator), the
validator checks it against the caller's tenant, and only then does it leave.

Invalid SQL is never returned as valid: a language model gets one chance to correct it (told why it failed);
otherwise the answer says `valid: false` and the reason. Statements refused outright (DDL such as DROP
TABLE, writes nobody asked for, several statements) are not handed back at all, only the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from services.ai import embedded, llm, templates
from services.ai.llm import LlmClient
from services.ai.schema import CannotAnswer, Draft, Schema, TenantDb
from services.ai.validate import Verdict, validate
from services.core.errors import InvalidArgument, NotFound, ServiceError

MAX_TEXT = 4000
DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS = 5, 20

REQUESTS = Counter(
    "launchpad_ai_requests_total", "AI requests, by RPC and source (llm or embedded)", ["rpc", "source"]
)
VALIDATION_FAILURES = Counter(
    "launchpad_ai_validation_failures_total",
    "Generated statements that failed validation, by source and stage (parse, policy, schema, dry_run)",
    ["source", "stage"],
)
UNANSWERED = Counter("launchpad_ai_cannot_answer_total", "Questions a source could not answer", ["source"])
REPAIRS = Counter(
    "launchpad_ai_repairs_total", "Second attempts after a failed validation, by outcome", ["outcome"]
)


@dataclass(frozen=True, slots=True)
class Answer:
    sql: str
    explanation: str
    source: str
    valid: bool
    reason: str = ""
    tables: tuple[str, ...] = ()
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class Suggestion:
    sql: str
    explanation: str
    source: str


def _text(value: str, field: str, *, required: bool) -> str:
    text = value.strip()
    if required and not text:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"{field} is longer than {MAX_TEXT} characters", field=field)
    return text


class Assistant:
    def __init__(self, model: LlmClient | None) -> None:
        self.model = model

    @property
    def source(self) -> str:
        return "llm" if self.model is not None else "embedded"

    async def ask(self, db: TenantDb, question: str, *, allow_writes: bool, deadline: float | None) -> Answer:
        question = _text(question, "question", required=True)
        REQUESTS.labels("QueryAi", self.source).inc()
        schema = await db.schema()
        try:
            if self.model is not None:
                return await self._ask_model(self.model, db, schema, question, allow_writes, deadline)
            draft = await embedded.generate(question, schema, db.find_values)
        except CannotAnswer as exc:
            UNANSWERED.labels(self.source).inc()
            reason = f"cannot answer: {exc.reason}"
            return Answer("", reason[:1].upper() + reason[1:] + ".", self.source, False, reason)
        return self._answer(draft, await self._validate(draft, schema, db, allow_writes))

    async def _ask_model(
        self,
        model: LlmClient,
        db: TenantDb,
        schema: Schema,
        question: str,
        allow_writes: bool,
        deadline: float | None,
    ) -> Answer:
        messages = llm.question_messages(question, schema, allow_writes)
        reply = await model.complete(messages, deadline)
        draft = llm.parse_answer(reply)
        verdict = await self._validate(draft, schema, db, allow_writes)
        if verdict.ok:
            return self._answer(draft, verdict)
        try:
            second = await model.complete(llm.repair_messages(messages, reply, verdict.reason), deadline)
            repaired = llm.parse_answer(second)
        except (CannotAnswer, ServiceError) as exc:
            REPAIRS.labels("declined" if isinstance(exc, CannotAnswer) else "error").inc()
            why = exc.reason if isinstance(exc, CannotAnswer) else exc.message
            return self._answer(draft, verdict, note=f" (no corrected statement: {why})")
        verdict = await self._validate(repaired, schema, db, allow_writes)
        REPAIRS.labels("repaired" if verdict.ok else "failed").inc()
        return self._answer(repaired, verdict, repaired=verdict.ok)

    async def _validate(self, draft: Draft, schema: Schema, db: TenantDb, allow_writes: bool) -> Verdict:
        verdict = await validate(draft.sql, schema, db, allow_writes=allow_writes)
        if not verdict.ok:
            VALIDATION_FAILURES.labels(self.source, verdict.stage).inc()
        return verdict

    def _answer(self, draft: Draft, verdict: Verdict, *, repaired: bool = False, note: str = "") -> Answer:
        if verdict.ok:
            return Answer(verdict.sql, draft.explanation, self.source, True, "", verdict.tables, repaired)
        reason = ("refused: " if verdict.refused else "invalid: ") + verdict.reason + note
        return Answer("" if verdict.refused else verdict.sql, draft.explanation, self.source, False, reason)

    async def suggest(
        self, db: TenantDb, context: str, table: str, limit: int, deadline: float | None
    ) -> list[Suggestion]:
        context = _text(context, "context", required=False)
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        limit = min(limit or DEFAULT_SUGGESTIONS, MAX_SUGGESTIONS)
        REQUESTS.labels("SuggestSql", self.source).inc()
        schema = await db.schema()
        if table and schema.table(table) is None:
            raise NotFound(f"there is no table {table!r} in your schema", field="table")
        if self.model is not None:
            reply = await self.model.complete(
                llm.suggestion_messages(context, table, schema, limit), deadline
            )
            drafts = llm.parse_suggestions(reply)
        else:
            drafts = await templates.suggestions(context, table, schema, db.find_values, limit)
        chosen: list[Suggestion] = []
        for draft in _unique(drafts)[: limit * 4]:  # each check may cost a dry run: bounded
            verdict = await self._validate(draft, schema, db, False)
            if verdict.ok:
                chosen.append(Suggestion(verdict.sql, draft.explanation, self.source))
            if len(chosen) >= limit:
                break
        return chosen


def _unique(drafts: list[Draft]) -> list[Draft]:
    seen: set[str] = set()
    unique = []
    for draft in drafts:
        key = " ".join(draft.sql.split()).lower()
        if key and key not in seen:
            seen.add(key)
            unique.append(draft)
    return unique
