"""Where realtime messages live: an in-process ring per channel, a Redis Stream or a Kafka topic per channel.

A channel is "<tenant>/<topic>": the tenant is part of the physical name (and of the Redis key), so one
tenant's subscribers can never read another tenant's messages. Offsets are a per-channel sequence (1, 2, ...)
and an epoch names one life of that sequence (a restarted embedded broker or a flushed Redis start a new one).
All backends keep a bounded history (`realtime_history` entries) for offset recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis.exceptions
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.core.blocking import Blocking
from services.core.errors import Unavailable
from services.realtime.protocol import now_ms

log = logging.getLogger("launchpad.realtime")

FOLLOW_BLOCK_MS = 5000
FOLLOW_BATCH = 500
RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    timestamp_ms: int
    payload: bytes  # a serialized google.protobuf.Value


class EpochChanged(Exception):
    """The channel's sequence started over (a Redis that lost its data): followers' offsets mean nothing now.
    Subscribers must resubscribe; with their old (epoch, offset) they get recovered=false and the new top."""


@dataclass(frozen=True, slots=True)
class History:
    entries: list[Entry]
    recovered: bool  # False when the history no longer reaches back to the requested offset


class Backend(Protocol):
    name: str

    async def append(self, channel: str, payload: bytes) -> Entry: ...
    async def top(self, channel: str) -> tuple[str, int]: ...  # (epoch, last offset)
    async def since(self, channel: str, offset: int) -> History: ...
    # Raises EpochChanged when the sequence it follows started over.
    def follow(self, channel: str, after: int, epoch: str) -> AsyncIterator[Entry]: ...
    async def close(self) -> None: ...


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

    async def follow(self, channel: str, after: int, epoch: str) -> AsyncIterator[Entry]:
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


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Redis errors as UNAVAILABLE (503 at the edge), not INTERNAL: the broker is away, nothing is broken."""
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as exc:
        raise Unavailable(f"redis: {type(exc).__name__}: {exc}") from exc


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
        with _unavailable():
            offset, _ = await self._append(keys=self._keys(channel), args=args)
        return Entry(int(offset), stamp, payload)

    async def top(self, channel: str) -> tuple[str, int]:
        _, seq, epoch = self._keys(channel)
        with _unavailable():
            await self._redis.set(epoch, uuid.uuid4().hex[:12], nx=True)
            current, top = await self._redis.mget(epoch, seq)
        return current.decode(), int(top or 0)

    async def since(self, channel: str, offset: int) -> History:
        stream, seq, _ = self._keys(channel)
        with _unavailable():
            rows = await self._redis.xrange(stream, min=f"{offset + 1}-0", max="+", count=self._history * 2)
            top = int(await self._redis.get(seq) or 0)
        return _history([_entry(i, f) for i, f in rows], offset, top)

    async def follow(self, channel: str, after: int, epoch: str) -> AsyncIterator[Entry]:
        stream, _, epoch_key = self._keys(channel)
        cursor = f"{after}-1"
        check_epoch = False  # after an error or a quiet spell: a restarted Redis numbers from 1 again
        while True:
            try:
                if check_epoch:
                    current = await self._redis.get(epoch_key)
                    if current is None or current.decode() != epoch:
                        raise EpochChanged(channel)
                    check_epoch = False
                answer = await self._redis.xread({stream: cursor}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS)
            except (asyncio.CancelledError, EpochChanged):
                raise
            except Exception as exc:  # Redis away: keep trying, and check the epoch before reading on
                log.warning("realtime: redis follow failed (%s), retrying", type(exc).__name__)
                check_epoch = True
                await asyncio.sleep(RETRY_S)
                continue
            check_epoch = not answer
            for _, rows in answer or ():
                for entry_id, fields in rows:
                    cursor = entry_id.decode()
                    yield _entry(entry_id, fields)

    async def ping(self) -> None:
        await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()


KAFKA_POLL_MS = 250  # a follower's poll; also how long a cancelled follower may hold its pool thread
KAFKA_TIMEOUT_S = 10
KAFKA_FOLLOWERS = 32  # threads for followers: beyond this many channels per process, polls take turns
_TOPIC_MAX = 249


def _escape(text: str, keep: str) -> str:
    """Kafka-safe and injective: anything outside [A-Za-z0-9] and `keep` becomes _xx per UTF-8 byte."""
    return "".join(
        c if (c.isascii() and c.isalnum()) or c in keep else "".join(f"_{b:02x}" for b in c.encode())
        for c in text
    )


def kafka_topic(channel: str) -> str:
    """ "<tenant>/<topic>" -> "lp.<tenant>.<topic>"; the tenant part never holds a dot, so no two channels
    (of one tenant or two) share a topic. Names over Kafka's 249 characters become "lph.<sha256>"."""
    tenant, _, topic = channel.partition("/")
    name = f"lp.{_escape(tenant, '-')}.{_escape(topic, '.-')}"
    return name if len(name) <= _TOPIC_MAX else "lph." + hashlib.sha256(channel.encode()).hexdigest()


class KafkaBackend:
    """One single-partition Kafka topic per channel; offset = the partition offset + 1 (ours start at 1).

    kafka-python is blocking: every call runs in a Blocking pool (followers in their own, so a busy follower
    never delays a publish). No consumer joins a group: readers assign the partition and seek, which needs no
    group coordination (Tansu's group joins take seconds). The epoch is constant: Kafka offsets never restart
    for a topic; a broker that lost its data shows up as an offset from the future (recovered=false).
    """

    name = "kafka"
    epoch = "kafka"

    def __init__(self, servers: str, history: int) -> None:
        self._servers = [s.strip() for s in servers.split(",") if s.strip()]
        self._history = history
        self._pool = Blocking("kafka", 4)
        self._followers = Blocking("kafka-follow", KAFKA_FOLLOWERS)
        self._connect_lock = threading.Lock()
        self._reader_lock = threading.Lock()  # kafka-python consumers are not thread-safe
        self._admin: KafkaAdminClient | None = None
        self._producer: KafkaProducer | None = None
        self._reader: KafkaConsumer | None = None
        self._topics: set[str] = set()

    def _options(self) -> dict[str, Any]:
        return {"bootstrap_servers": self._servers, "request_timeout_ms": KAFKA_TIMEOUT_S * 1000 + 1000}

    def _consumer(self) -> KafkaConsumer:
        return KafkaConsumer(group_id=None, enable_auto_commit=False, **self._options())

    def _connect(self) -> tuple[KafkaAdminClient, KafkaProducer, KafkaConsumer]:
        """The shared clients, made on first use (and again after a failed start: the broker may come up)."""
        with self._connect_lock:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._options())
            if self._producer is None:
                self._producer = KafkaProducer(acks="all", linger_ms=0, **self._options())
            if self._reader is None:
                self._reader = self._consumer()
            return self._admin, self._producer, self._reader

    def _partition(self, channel: str) -> TopicPartition:
        """The channel's partition, creating its topic on first use (another process may have won: fine)."""
        topic = kafka_topic(channel)
        if topic not in self._topics:
            admin = self._connect()[0]
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(topic, 1, 1)], timeout_ms=KAFKA_TIMEOUT_S * 1000)
            self._topics.add(topic)
        return TopicPartition(topic, 0)

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await self._pool.run(fn, *args)
        except KafkaError as exc:
            raise Unavailable(f"kafka: {type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        await self._run(self._ping)

    def _ping(self) -> None:
        reader = self._connect()[2]
        with self._reader_lock:
            reader.topics()  # a metadata round trip

    async def append(self, channel: str, payload: bytes) -> Entry:
        return await self._run(self._append, channel, payload)

    def _append(self, channel: str, payload: bytes) -> Entry:
        tp = self._partition(channel)
        stamp = now_ms()
        sent = self._connect()[1].send(tp.topic, payload, partition=0, timestamp_ms=stamp)
        return Entry(sent.get(KAFKA_TIMEOUT_S).offset + 1, stamp, payload)

    async def top(self, channel: str) -> tuple[str, int]:
        return self.epoch, await self._run(self._top, channel)

    def _top(self, channel: str) -> int:
        tp = self._partition(channel)
        reader = self._connect()[2]
        with self._reader_lock:
            return int(reader.end_offsets([tp])[tp])  # the next Kafka offset = our last offset

    async def since(self, channel: str, offset: int) -> History:
        return await self._run(self._since, channel, offset)

    def _since(self, channel: str, offset: int) -> History:
        """Entries after our `offset` (= from Kafka offset `offset`), at most `history`, read up to the end
        offset seen at the start; a read that cannot finish raises rather than leave a silent gap."""
        tp = self._partition(channel)
        reader = self._connect()[2]
        with self._reader_lock:
            first, end = reader.beginning_offsets([tp])[tp], reader.end_offsets([tp])[tp]
            start = max(offset, first, end - self._history)
            entries: list[Entry] = []
            if start < end:
                reader.assign([tp])
                reader.seek(tp, start)
                deadline = time.monotonic() + KAFKA_TIMEOUT_S
                while reader.position(tp) < end:
                    if time.monotonic() > deadline:
                        raise Unavailable(f"kafka: history of {tp.topic} not read within {KAFKA_TIMEOUT_S}s")
                    for record in reader.poll(timeout_ms=KAFKA_POLL_MS).get(tp, ()):
                        if record.offset < end:
                            entries.append(Entry(record.offset + 1, record.timestamp, record.value))
                reader.unsubscribe()
        return _history(entries, offset, end)

    async def follow(self, channel: str, after: int, epoch: str) -> AsyncIterator[Entry]:
        """Its own consumer, assigned and seeked to Kafka offset `after` (our offset after + 1)."""
        lock = threading.Lock()  # a cancelled poll may still run in its thread when close is called
        consumer: KafkaConsumer | None = None
        try:
            while True:
                try:
                    if consumer is None:
                        consumer = await self._followers.run(self._follower, channel, after)
                    records = await self._followers.run(self._poll, consumer, lock)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # Kafka away: keep trying; the consumer resumes at its position
                    log.warning("realtime: kafka follow failed (%s), retrying", type(exc).__name__)
                    await asyncio.sleep(RETRY_S)
                    continue
                for record in records:
                    after = record.offset + 1
                    yield Entry(after, record.timestamp, record.value)
        finally:
            if consumer is not None:
                await self._followers.run(self._close_consumer, consumer, lock)

    def _follower(self, channel: str, after: int) -> KafkaConsumer:
        tp = self._partition(channel)
        consumer = self._consumer()
        consumer.assign([tp])
        consumer.seek(tp, after)
        return consumer

    @staticmethod
    def _poll(consumer: KafkaConsumer, lock: threading.Lock) -> list[Any]:
        with lock:
            batches = consumer.poll(timeout_ms=KAFKA_POLL_MS, max_records=FOLLOW_BATCH)
        return [record for records in batches.values() for record in records]

    @staticmethod
    def _close_consumer(consumer: KafkaConsumer, lock: threading.Lock) -> None:
        with lock:
            consumer.close()

    async def close(self) -> None:
        await self._pool.run(self._close)
        self._pool.shutdown()
        self._followers.shutdown()

    def _close(self) -> None:
        with self._connect_lock:
            for client in (self._producer, self._reader, self._admin):
                if client is not None:
                    client.close()
            self._admin = self._producer = self._reader = None
