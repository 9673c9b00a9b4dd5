"""Where realtime messages live: an in-process ring per channel, or a Redis Stream per channel.

A channel is "<tenant>/<topic>": the tenant is part of the physical name (and of the Redis key), so one
tenant's subscribers can never read another tenant's messages. Offsets are a per-channel sequence (1, 2, ...)
and an epoch names one life of that sequence (a restarted embedded broker or a flushed Redis start a new one).
Both backends keep a bounded history (`realtime_history` entries) for offset recovery.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("launchpad.realtime")

FOLLOW_BLOCK_MS = 5000
FOLLOW_BATCH = 500
RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    timestamp_ms: int
    payload: bytes  # a serialized google.protobuf.Value


@dataclass(frozen=True, slots=True)
class History:
    entries: list[Entry]
    recovered: bool  # False when the history no longer reaches back to the requested offset


class Backend(Protocol):
    name: str

    async def append(self, channel: str, payload: bytes) -> Entry: ...
    async def top(self, channel: str) -> tuple[str, int]: ...  # (epoch, last offset)
    async def since(self, channel: str, offset: int) -> History: ...
    def follow(self, channel: str, after: int) -> AsyncIterator[Entry]: ...
    async def close(self) -> None: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def _history(entries: list[Entry], offset: int, top: int) -> History:
    """What follows `offset`; recovered only when nothing between offset and the first kept entry is lost."""
    if offset > top:
        return History([], False)  # an offset from the future: another epoch in all but name
    first = entries[0].offset if entries else top + 1
    return History(entries, first <= offset + 1)


class MemoryBackend:
    """The embedded broker: one bounded ring per channel, followers woken by an event."""

    name = "embedded"

    def __init__(self, history: int) -> None:
        self.epoch = uuid.uuid4().hex[:12]
        self._history = history
        self._rings: dict[str, deque[Entry]] = {}
        self._tops: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}

    def _event(self, channel: str) -> asyncio.Event:
        event = self._events.get(channel)
        if event is None:
            event = self._events[channel] = asyncio.Event()
        return event

    async def append(self, channel: str, payload: bytes) -> Entry:
        entry = Entry(self._tops.get(channel, 0) + 1, now_ms(), payload)
        self._tops[channel] = entry.offset
        self._rings.setdefault(channel, deque(maxlen=self._history)).append(entry)
        self._events.pop(channel, asyncio.Event()).set()  # wake the followers; the next wait gets a new event
        return entry

    async def top(self, channel: str) -> tuple[str, int]:
        return self.epoch, self._tops.get(channel, 0)

    async def since(self, channel: str, offset: int) -> History:
        entries = [e for e in self._rings.get(channel, ()) if e.offset > offset]
        return _history(entries, offset, self._tops.get(channel, 0))

    async def follow(self, channel: str, after: int) -> AsyncIterator[Entry]:
        while True:
            event = self._event(channel)
            fresh = [e for e in self._rings.get(channel, ()) if e.offset > after]
            for entry in fresh:
                after = entry.offset
                yield entry
            if not fresh:
                await event.wait()

    async def close(self) -> None:
        return None


# One round trip, atomic: the next offset becomes the stream entry id "<offset>-1", so XREAD/XRANGE by
# offset work directly and concurrent publishers (any number of processes) never interleave out of order.
_APPEND = """
local offset = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3], 'NX')
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-1', 't', ARGV[4], 'd', ARGV[1])
return {offset, redis.call('GET', KEYS[3])}
"""


def _offset(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    return Entry(_offset(entry_id), int(fields[b"t"]), fields[b"d"])


class RedisBackend:
    """Redis Streams: XADD (MAXLEN ~ history) per channel, XRANGE for recovery, blocking XREAD to follow."""

    name = "redis"

    def __init__(self, client: Any, history: int, prefix: str = "launchpad:rt") -> None:
        self._redis = client
        self._history = history
        self._prefix = prefix
        self._append = client.register_script(_APPEND)

    def _keys(self, channel: str) -> list[str]:
        base = f"{self._prefix}:{channel}"
        return [f"{base}:stream", f"{base}:seq", f"{base}:epoch"]

    async def append(self, channel: str, payload: bytes) -> Entry:
        stamp = now_ms()
        args = [payload, self._history, uuid.uuid4().hex[:12], stamp]
        offset, _ = await self._append(keys=self._keys(channel), args=args)
        return Entry(int(offset), stamp, payload)

    async def top(self, channel: str) -> tuple[str, int]:
        _, seq, epoch = self._keys(channel)
        await self._redis.set(epoch, uuid.uuid4().hex[:12], nx=True)
        current, top = await self._redis.mget(epoch, seq)
        return current.decode(), int(top or 0)

    async def since(self, channel: str, offset: int) -> History:
        stream, seq, _ = self._keys(channel)
        rows = await self._redis.xrange(stream, min=f"{offset + 1}-0", max="+", count=self._history * 2)
        top = int(await self._redis.get(seq) or 0)
        return _history([_entry(i, f) for i, f in rows], offset, top)

    async def follow(self, channel: str, after: int) -> AsyncIterator[Entry]:
        stream = self._keys(channel)[0]
        cursor = f"{after}-1"
        while True:
            try:
                answer = await self._redis.xread({stream: cursor}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep trying; subscribers resume where the cursor is
                log.warning("realtime: redis follow failed (%s), retrying", type(exc).__name__)
                await asyncio.sleep(RETRY_S)
                continue
            for _, rows in answer or ():
                for entry_id, fields in rows:
                    cursor = entry_id.decode()
                    yield _entry(entry_id, fields)

    async def close(self) -> None:
        await self._redis.aclose()
