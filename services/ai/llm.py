"""An OpenAI-compatible chat completions client (OpenAI, Azure-style proxies, Ollama, vLLM, LM Studio ...)
and the prompts that turn a question plus the tenant's schema into SQL.

`POST {base}/chat/completions` with `Authorization: Bearer <key>`; one retry on a timeout, a connection
failure, HTTP 429 or 5xx. The key is only ever in that header: never logged, never in an error message,
never returned. Upstream error bodies are not passed on either (they may echo the key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import httpx

from services.ai.schema import CannotAnswer, Draft, Schema
from services.core.deps import redact
from services.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable

log = logging.getLogger("launchpad.ai")
RETRY_PAUSE_S = 0.25
_MARGIN_S = 0.5  # left for validation after the model answers


class LlmClient:
    """One HTTP client per process; `complete()` is safe to call concurrently."""

    def __init__(
        self,
        base_url: str,
        key: str,
        model: str,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.base_url, self.model, self.timeout_s = base_url.rstrip("/"), model, timeout_s
        self.shown_url = redact(self.base_url)  # what messages and logs name: no user:password@
        # user:password@ in the URL is HTTP Basic auth (httpx's reading of it, kept); it is moved out of the
        # URL so that httpx's own request log line does not print it.
        url = httpx.URL(self.base_url)
        auth = httpx.BasicAuth(url.username, url.password) if url.username or url.password else None
        self._http = httpx.AsyncClient(
            base_url=url.copy_with(username=None, password=None),
            headers={"Authorization": f"Bearer {key}"},
            auth=auth,
            timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
            transport=transport,
        )

    async def ping(self) -> None:
        """Raises unless the server answers GET /models (OpenAI, Ollama and vLLM all serve it)."""
        response = await self._http.get("/models", timeout=5.0)
        if response.status_code != 200:
            raise ConnectionError(f"GET /models answered HTTP {response.status_code}")

    async def complete(self, messages: list[dict[str, str]], deadline: float | None = None) -> str:
        """The assistant message's text; a clear ServiceError when the model cannot be reached."""
        body = {"model": self.model, "messages": messages, "temperature": 0}
        failure: Exception | None = None
        for attempt in range(2):
            timeout = self._timeout(deadline)
            try:
                # httpx's timeout bounds each read, not the whole exchange: a server trickling bytes
                # would hold the call past its deadline without this.
                async with asyncio.timeout(timeout):
                    response = await self._http.post("/chat/completions", json=body, timeout=timeout)
            except (httpx.TimeoutException, TimeoutError):
                failure = DeadlineExceeded(
                    f"the language model did not answer within {timeout:g} s ({attempt + 1} attempt(s))"
                )
            except httpx.TransportError as exc:
                failure = Unavailable(
                    f"the language model at {self.shown_url} is not reachable ({type(exc).__name__})"
                )
            except httpx.HTTPError as exc:  # DecodingError, TooManyRedirects, ...: a broken answer
                failure = Unavailable(f"the language model's answer could not be read ({type(exc).__name__})")
            else:
                if response.status_code == 200:
                    return _content(response)
                failure = _http_failure(response.status_code)
                if response.status_code != 429 and response.status_code < 500:
                    # a request the server will refuse again; a refused key is worth an operator's look
                    log.warning("language model call refused", extra={"status": response.status_code})
                    break
            log.warning("language model call failed", extra={"attempt": attempt + 1, "error": str(failure)})
            if attempt == 0:
                await asyncio.sleep(RETRY_PAUSE_S)
        assert failure is not None
        raise failure

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout_s
        left = deadline - time.monotonic() - _MARGIN_S
        if left <= 0:
            raise DeadlineExceeded("no time left to ask the language model within the call's deadline")
        return min(self.timeout_s, left)

    async def close(self) -> None:
        await self._http.aclose()


def _http_failure(status: int) -> Exception:
    if status == 429:
        return ResourceExhausted(
            "the language model is rate limiting this service (HTTP 429); try again later"
        )
    if status in (401, 403):
        return Unavailable(f"the language model refused our credentials (HTTP {status}): check OPENAI_KEY")
    if status == 404:
        return Unavailable(
            "the language model endpoint or model was not found (HTTP 404): check OPENAI_BASE_URL and OPENAI_MODEL"
        )
    return Unavailable(f"the language model answered HTTP {status}")


def _content(response: httpx.Response) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Unavailable("the language model's answer is not a chat completion") from None
    if not isinstance(content, str):
        raise Unavailable("the language model's answer has no text")
    return content


# --- Prompts --------------------------------------------------------------------------------------------

_RULES = """You write SQL for a {dialect} database. Use only the tables and columns in the schema below; \
never invent names. {writes} Write exactly one statement, no comments. If the question cannot be answered \
from this schema, say so instead of guessing.

Answer with a JSON object only: {{"sql": "<the statement>", "explanation": "<one or two sentences>"}}. \
When you cannot answer: {{"sql": "", "explanation": "<why not>"}}.

Schema:
{ddl}"""
_READ_ONLY = "Write a read-only SELECT (or WITH ... SELECT); never INSERT, UPDATE, DELETE or DDL."
_WRITES_OK = "You may write INSERT, UPDATE or DELETE when the question asks to change data; never DDL."


def system_prompt(schema: Schema, allow_writes: bool) -> str:
    return _RULES.format(
        dialect=schema.dialect_name, writes=_WRITES_OK if allow_writes else _READ_ONLY, ddl=schema.ddl()
    )


def question_messages(question: str, schema: Schema, allow_writes: bool) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": system_prompt(schema, allow_writes)},
        {"role": "user", "content": question},
    ]


def repair_messages(messages: list[dict[str, str]], reply: str, reason: str) -> list[dict[str, str]]:
    """The conversation so far plus why the statement failed: one chance to correct it."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"That statement failed validation: {reason}. Answer again with a corrected statement "
            "in the same JSON form, or with an empty sql and the reason if it cannot be done.",
        },
    ]


def suggestion_messages(context: str, table: str, schema: Schema, limit: int) -> list[dict[str, str]]:
    focus = f" The user is looking at the table {table}." if table else ""
    ask = (
        f"Suggest up to {limit} useful read-only SQL statements for what the user is typing: {context!r}."
        f"{focus} Answer with a JSON array only: "
        '[{"sql": "<statement>", "explanation": "<one sentence>"}, ...].'
    )
    return [{"role": "system", "content": system_prompt(schema, False)}, {"role": "user", "content": ask}]


# --- Answers --------------------------------------------------------------------------------------------

_JSON_BLOCK = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_SQL_BLOCK = re.compile(r"```(?:sql)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_SQL_START = re.compile(r"^\s*(select|with|insert|update|delete|drop|create|alter|truncate)\b", re.IGNORECASE)


def parse_answer(reply: str) -> Draft:
    """The model's reply -> a Draft; CannotAnswer when it declined (or said nothing usable)."""
    data = _json(reply)
    if isinstance(data, dict):
        sql, explanation = str(data.get("sql") or "").strip(), str(data.get("explanation") or "").strip()
        if not sql:
            raise CannotAnswer(explanation or "the language model gave no statement")
        return Draft(sql, explanation)
    block = _SQL_BLOCK.search(reply)
    if block:
        return Draft(block.group(1).strip(), reply[: block.start()].strip())
    if _SQL_START.match(reply):
        return Draft(reply.strip(), "")
    raise CannotAnswer(reply.strip()[:500] or "the language model gave no statement")


def parse_suggestions(reply: str) -> list[Draft]:
    data = _json(reply)
    items = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
    drafts = []
    for item in items:
        if isinstance(item, dict) and str(item.get("sql") or "").strip():
            drafts.append(Draft(str(item["sql"]).strip(), str(item.get("explanation") or "").strip()))
    return drafts


def _json(reply: str) -> Any:
    for candidate in (reply, *(m.group(1) for m in _JSON_BLOCK.finditer(reply)), _outermost(reply)):
        try:
            return json.loads(candidate)
        except (ValueError, TypeError):
            continue
    return None


def _outermost(reply: str) -> str:
    """The text from the first { or [ to the last } or ]: models sometimes add a sentence around it."""
    starts = [i for i in (reply.find("{"), reply.find("[")) if i >= 0]
    end = max(reply.rfind("}"), reply.rfind("]"))
    return reply[min(starts) : end + 1] if starts and end > min(starts) else ""
