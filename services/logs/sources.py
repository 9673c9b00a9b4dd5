"""Where log lines come from: the services' own JSON log files (embedded) or Loki (live).

Both answer `query(...)` with at most `limit` entries, newest first for "backward", and `tail(...)` with lines
written after the call started. Tenant scoping: `scope` is the caller's tenant, or None for the platform admin
(every line). Embedded lines carry a `tenant` field (services/core/jsonlog.py); a line without one (start-up,
public RPCs) belongs to the platform.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus, WebSocketException

from services.core.blocking import Blocking
from services.core.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable
from services.logs.logql import Selector

TAIL_POLL_S = 0.25
LOKI_TAIL_LIMIT = 100  # Loki's own default for /tail
_CHUNK = 64 * 1024
_NOT_LABELS = frozenset({"ts", "message", "exc"})


@dataclass(frozen=True, slots=True)
class Entry:
    ts_ns: int
    service: str
    level: str
    request_id: str
    message: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.labels.get("tenant", "")


def visible(entry: Entry, scope: str | None) -> bool:
    return scope is None or entry.tenant == scope


def parse_ts(value: str) -> int:
    """RFC 3339 (`...Z` or an offset) -> Unix nanoseconds."""
    moment = datetime.fromisoformat(value)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def entry_from_json(line: str, fallback_ns: int = 0, stream: dict[str, str] | None = None) -> Entry | None:
    """One JSON log line (services/core/jsonlog.py format) -> Entry; None when it is not one."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        if stream is None:
            return None
        record = {"message": line}  # Loki may hold plain-text lines: the stream labels say the rest
    labels = {**(stream or {})}
    labels.update({k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in record.items()})
    try:
        ts_ns = parse_ts(record["ts"]) if isinstance(record.get("ts"), str) else fallback_ns
    except ValueError:
        ts_ns = fallback_ns
    if not ts_ns:
        return None
    return Entry(
        ts_ns=ts_ns,
        service=labels.get("service", ""),
        level=labels.get("level", ""),
        request_id=labels.get("request_id", ""),
        message=str(record.get("message", "")),
        labels={k: v for k, v in labels.items() if k not in _NOT_LABELS},
    )


def _lines_backward(path: Path) -> Iterator[str]:
    """The file's lines, last first, reading 64 KiB chunks from the end (bounded memory per line)."""
    with path.open("rb") as handle:
        position = handle.seek(0, os.SEEK_END)
        rest = b""
        while position > 0:
            step = min(_CHUNK, position)
            position -= step
            handle.seek(position)
            parts = (handle.read(step) + rest).split(b"\n")
            rest = parts[0]
            for raw in reversed(parts[1:]):
                if raw:
                    yield raw.decode("utf-8", "replace")
        if rest:
            yield rest.decode("utf-8", "replace")


def _lines_forward(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                yield raw.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Window:
    """What a query asks for, once validated."""

    selector: Selector
    start_ns: int
    end_ns: int
    limit: int
    backward: bool
    scope: str | None


def _file_entries(path: Path, window: Window) -> Iterator[Entry]:
    """Matching entries of one file in the window's order; stops at the far edge of the time range.

    A service writes its file in time order, so reading backwards can stop at the first line before `start`.
    """
    lines = _lines_backward(path) if window.backward else _lines_forward(path)
    for line in lines:
        entry = entry_from_json(line)
        if entry is None:
            continue
        if window.backward and entry.ts_ns < window.start_ns:
            return
        if not window.backward and entry.ts_ns > window.end_ns:
            return
        if not window.start_ns <= entry.ts_ns <= window.end_ns:
            continue
        if visible(entry, window.scope) and window.selector.matches(entry.labels, line):
            yield entry


class EmbeddedLogs:
    """The services' own JSON log files (`*.log` under settings.process.log_dir)."""

    mode = "embedded"

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._pool = Blocking("logs-files", max_workers=2)

    def _query(self, window: Window) -> list[Entry]:
        streams = [_file_entries(path, window) for path in sorted(self.log_dir.glob("*.log"))]
        merged = heapq.merge(*streams, key=lambda e: e.ts_ns, reverse=window.backward)
        return list(itertools.islice(merged, window.limit))

    async def query(self, window: Window) -> list[Entry]:
        return await self._pool.run(self._query, window)

    async def tail(self, selector: Selector, scope: str | None) -> AsyncIterator[Entry]:
        follower = _Follower(self.log_dir)
        await self._pool.run(follower.poll)  # positions every file at its current end
        while True:
            await asyncio.sleep(TAIL_POLL_S)
            for line in await self._pool.run(follower.poll):
                entry = entry_from_json(line)
                if entry is not None and visible(entry, scope) and selector.matches(entry.labels, line):
                    yield entry

    async def close(self) -> None:
        self._pool.shutdown()


class _Follower:
    """Offsets into every log file; poll() returns the complete lines appended since the last poll.

    Files present at the first poll start at their end, files that appear later at their start; a file that
    shrank (rotated or truncated) starts over.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.offsets: dict[Path, int] | None = None
        self.partial: dict[Path, bytes] = {}

    def poll(self) -> list[str]:
        first = self.offsets is None
        offsets = self.offsets if self.offsets is not None else {}
        lines: list[str] = []
        for path in sorted(self.log_dir.glob("*.log")):
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if first:
                offsets[path] = size
                continue
            offset = offsets.get(path, 0)
            if size < offset:
                offset, self.partial[path] = 0, b""
            if size == offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                data = self.partial.pop(path, b"") + handle.read(size - offset)
            offsets[path] = size
            *complete, rest = data.split(b"\n")
            if rest:
                self.partial[path] = rest
            lines.extend(raw.decode("utf-8", "replace") for raw in complete if raw.strip())
        self.offsets = offsets
        return lines


class LokiLogs:
    """Loki's HTTP API: /loki/api/v1/query_range, one Loki tenant (X-Scope-OrgID) per Launchpad tenant."""

    mode = "live"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s)

    async def ping(self) -> None:
        (await self._http.get("/ready")).raise_for_status()

    async def query(self, window: Window) -> list[Entry]:
        params = {
            "query": window.selector.render(),
            "start": str(window.start_ns),
            "end": str(window.end_ns),
            "limit": str(window.limit),
            "direction": "backward" if window.backward else "forward",
        }
        body = await self._get("/loki/api/v1/query_range", params, window.scope)
        entries = [
            entry
            for stream in body.get("data", {}).get("result", [])
            for ts, line in stream.get("values", [])
            if (entry := entry_from_json(line, int(ts), stream.get("stream") or {})) is not None
        ]
        entries.sort(key=lambda e: e.ts_ns, reverse=window.backward)
        return entries[: window.limit]

    async def tail(self, selector: Selector, scope: str | None) -> AsyncIterator[Entry]:
        """Loki's /loki/api/v1/tail WebSocket from now on; Loki applies the selector and the tenant header."""
        params = {"query": selector.render(), "limit": str(LOKI_TAIL_LIMIT), "start": str(time.time_ns())}
        base = httpx.URL(self.url)
        url = base.copy_with(scheme=self._ws_scheme(), path=base.path.rstrip("/") + "/loki/api/v1/tail")
        headers = {"X-Scope-OrgID": scope or "default"}
        try:
            # proxy=None: Loki is reached directly, as the query_range client does.
            async with ws_connect(
                str(url.copy_merge_params(params)), additional_headers=headers, proxy=None
            ) as ws:
                async for message in ws:
                    for entry in _tail_entries(message):
                        yield entry
        except InvalidStatus as exc:
            raise self._refused(exc.response.status_code, exc.response.body or b"") from None
        except (OSError, TimeoutError, ConnectionClosedError, WebSocketException) as exc:
            raise Unavailable(f"Loki tail at {self.url} failed: {type(exc).__name__}") from None

    def _ws_scheme(self) -> str:
        return "wss" if self.url.startswith("https") else "ws"

    def _refused(self, status: int, body: bytes) -> ServiceError:
        text = body.decode("utf-8", "replace").strip()
        if status == 400:
            return InvalidArgument(f"Loki refused the query: {text[:500]}")
        return ServiceError(f"Loki answered HTTP {status}: {text[:300]}", code=Unavailable.code)

    async def _get(self, path: str, params: dict[str, str], scope: str | None) -> dict[str, Any]:
        headers = {"X-Scope-OrgID": scope or "default"}
        try:
            response = await self._http.get(path, params=params, headers=headers)
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"Loki at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"Loki at {self.url} is unreachable: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise self._refused(response.status_code, response.content)
        return response.json()

    async def close(self) -> None:
        await self._http.aclose()


def _tail_entries(message: str | bytes) -> list[Entry]:
    """One /tail message: {"streams": [{"stream": {labels}, "values": [[ns, line]]}], "dropped_entries": [...]}.

    Dropped entries are ones Loki could not send fast enough; it reports only their labels and timestamps, so
    there is nothing to show for them.
    """
    body = orjson.loads(message)
    return [
        entry
        for stream in body.get("streams") or []
        for ts, line in stream.get("values", [])
        if (entry := entry_from_json(line, int(ts), stream.get("stream") or {})) is not None
    ]
