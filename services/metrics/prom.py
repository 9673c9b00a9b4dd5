"""Prometheus's HTTP API (live) with a 5 s cache whose concurrent identical misses share one request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.core.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable

CACHE_TTL_S = 5.0
CACHE_MAX = 1000

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """Prometheus's body: status, data {resultType, result}, warnings."""

    status: str
    data: dict[str, Any]
    warnings: tuple[str, ...] = ()
    synthetic: bool = False
    cached: bool = False


class PromClient:
    """GET /api/v1/query and /api/v1/query_range; errors mapped to statuses a client can act on."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s)

    async def ping(self) -> None:
        (await self._http.get("/-/ready")).raise_for_status()

    async def get(self, path: str, params: dict[str, str]) -> Answer:
        try:
            response = await self._http.get(path, params=params)
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"Prometheus at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"Prometheus at {self.url} is unreachable: {type(exc).__name__}") from None
        body = _json(response)
        if response.status_code == 200 and body.get("status") == "success":
            return Answer("success", body.get("data") or {}, tuple(body.get("warnings") or ()))
        raise _error(response.status_code, body, response.text)

    async def close(self) -> None:
        await self._http.aclose()


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, body: dict[str, Any], text: str) -> ServiceError:
    """400/422 bad query -> InvalidArgument; timeout -> DeadlineExceeded; anything else -> Unavailable."""
    message = str(body.get("error") or text.strip()[:300] or f"HTTP {status}")
    kind = str(body.get("errorType", ""))
    if kind == "timeout" or status == 504:
        return DeadlineExceeded(f"Prometheus query timed out: {message}", error_type=kind)
    if status in (400, 422) or kind in ("bad_data", "execution"):
        return InvalidArgument(message, error_type=kind)
    return Unavailable(f"Prometheus answered HTTP {status}: {message}", error_type=kind)


@dataclass(slots=True)
class Cache:
    """Answers for CACHE_TTL_S per key; one upstream call per key at a time (one future per key)."""

    ttl_s: float = CACHE_TTL_S
    entries: dict[Key, tuple[float, Answer]] = field(default_factory=dict)
    pending: dict[Key, asyncio.Future[Answer]] = field(default_factory=dict)

    async def get(self, key: Key, fetch: Callable[[], Awaitable[Answer]]) -> Answer:
        hit = self.entries.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return _mark_cached(hit[1])
        task = self.pending.get(key)
        leader = task is None
        if task is None:
            # A task, not the caller's coroutine: a caller that goes away does not fail the others waiting.
            task = self.pending[key] = asyncio.ensure_future(self._fetch(key, fetch))
        answer = await asyncio.shield(task)
        return answer if leader else _mark_cached(answer)

    async def _fetch(self, key: Key, fetch: Callable[[], Awaitable[Answer]]) -> Answer:
        try:
            answer = await fetch()
            self._store(key, answer)  # errors are not cached: the next call asks again
            return answer
        finally:
            self.pending.pop(key, None)

    def _store(self, key: Key, answer: Answer) -> None:
        now = time.monotonic()
        if len(self.entries) >= CACHE_MAX:
            self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            if len(self.entries) >= CACHE_MAX:
                self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (now + self.ttl_s, answer)


def _mark_cached(answer: Answer) -> Answer:
    return Answer(answer.status, answer.data, answer.warnings, answer.synthetic, cached=True)
