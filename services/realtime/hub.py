"""Local fan-out: one follower per channel this process has subscribers for, a bounded outbox per connection.

The backpressure rule is protocol.Outbox's: a slow client's stream ends with RESOURCE_EXHAUSTED. Here it is
also unsubscribed from everything at once and `realtime_slow_client_disconnects_total` goes up; its stream
ends as soon as its transport takes the next write, or when it goes away. Other clients are never slowed:
they have their own outboxes and the follower only appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from prometheus_client import Counter, Gauge

from launchpad.realtime.v1 import realtime_pb2
from services.core.context import Principal
from services.core.errors import ServiceError, Unavailable
from services.realtime import protocol
from services.realtime.backends import Backend, Entry, EpochChanged

log = logging.getLogger("launchpad.realtime")

HEARTBEAT_TOPIC = "naksha.telemetry"
HEARTBEAT_S = 1.0
QUIET_S = 2.0  # a heartbeat only when nothing real was published on the channel for this long

PUBLISHED = Counter("realtime_messages_published_total", "Messages published", ["backend"])
DELIVERED = Counter("realtime_messages_delivered_total", "Message frames queued for clients", ["synthetic"])
CONNECTIONS = Gauge("realtime_connections", "Open realtime streams")
SLOW_DISCONNECTS = Counter(
    "realtime_slow_client_disconnects_total", "Clients disconnected because their queue was full"
)
_DELIVERED_REAL, _DELIVERED_SYNTHETIC = DELIVERED.labels("false"), DELIVERED.labels("true")


class Connection(protocol.Outbox[Any]):
    """One stream's outbox (a client's, or an edge's relay) and its subscriptions (by topic; by channel on a
    relay), which `on_overflow` (the hub's drop) ends at once when the outbox overflows. Frames are
    ConnectResponse, or RelayResponse on a relay."""

    def __init__(self, on_overflow: Callable[[Connection], None], limit: int | None = None) -> None:
        super().__init__(limit, lambda: self._overflowed(on_overflow))
        self.subscriptions: dict[str, Subscription] = {}

    def _overflowed(self, on_overflow: Callable[[Connection], None]) -> None:
        SLOW_DISCONNECTS.inc()
        on_overflow(self)


@dataclass(slots=True, eq=False)
class Reader:
    """Who reads a subscription, and the tenant's policy revision its access was last decided at (None: a
    tenant admin, never governed, never re-checked). access.py re-decides readers when the revision moves."""

    principal: Principal
    revision: int | None


class Subscription(protocol.Subscription[Entry]):
    """One connection on one channel (each offset once, in order; live entries wait while the history is read).

    `readers` are those it delivers for: one (key 0) on a client's Connect stream; on an edge's relay, one
    per socket subscribed through it (keyed by the id of that socket's subscribe)."""

    def __init__(self, conn: Connection, tenant: str, topic: str, channel: str) -> None:
        super().__init__()
        self.conn, self.tenant, self.topic, self.channel = conn, tenant, topic, channel
        self.readers: dict[int, Reader] = {}
        self.epoch = ""

    def emit(self, item: Entry) -> None:
        _DELIVERED_REAL.inc()
        self.send(protocol.message_frame(self.topic, self.epoch, item))

    def send(self, frame: realtime_pb2.ConnectResponse) -> None:
        self.conn.offer(frame)

    def revoke(self, key: int, failure: ServiceError) -> bool:
        """Ends reader `key`'s access with `failure` (an error frame for the topic; the stream goes on).
        True when nobody is left to deliver for: the caller then detaches the subscription from the hub."""
        if self.readers.pop(key, None) is None or self.conn.subscriptions.get(self.topic) is not self:
            return False  # already gone (unsubscribed, resubscribed or the stream ended)
        del self.conn.subscriptions[self.topic]
        self.conn.offer(protocol.error_frame(failure, self.topic))
        return True


class RelaySubscription(Subscription):
    """An edge process's one subscription to a channel: frames go out tagged with the tenant. Its readers
    are the edge's sockets on the channel; the edge unsubscribes each as it leaves."""

    def send(self, frame: realtime_pb2.ConnectResponse) -> None:
        self.conn.offer(protocol.relayed(self.tenant, frame))

    def revoke(self, key: int, failure: ServiceError) -> bool:
        """Ends one socket's subscription: the error frame goes out with the id of that socket's subscribe
        (the edge sends it to that socket alone); the channel goes when its last socket did."""
        if self.readers.pop(key, None) is None or self.conn.subscriptions.get(self.channel) is not self:
            return False
        self.conn.offer(protocol.relayed(self.tenant, protocol.error_frame(failure, self.topic), key))
        if self.readers:
            return False
        del self.conn.subscriptions[self.channel]
        return True


class Hub:
    """Channels with local subscribers, one follower task each, and the heartbeat loop."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._subs: dict[str, set[Subscription]] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._last_real: dict[str, float] = {}
        self._started = time.monotonic()
        self._heartbeat: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat())

    async def attach(self, sub: Subscription) -> None:
        subs = self._subs.setdefault(sub.channel, set())
        subs.add(sub)
        if sub.channel not in self._followers:
            epoch, top = await self.backend.top(sub.channel)
            if sub.channel not in self._followers and sub in subs:  # another attach may have won the race
                self._followers[sub.channel] = asyncio.create_task(self._follow(sub.channel, top, epoch))

    def detach(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.channel]
            self._last_real.pop(sub.channel, None)
            follower = self._followers.pop(sub.channel, None)
            if follower is not None:
                follower.cancel()

    def drop(self, conn: Connection) -> None:
        for sub in conn.subscriptions.values():
            self.detach(sub)
        conn.subscriptions.clear()

    def by_tenant(self) -> dict[str, list[Subscription]]:
        """This process's subscriptions, grouped by tenant (a snapshot)."""
        tenants: dict[str, list[Subscription]] = {}
        for subs in self._subs.values():
            for sub in subs:
                tenants.setdefault(sub.tenant, []).append(sub)
        return tenants

    async def _follow(self, channel: str, after: int, epoch: str) -> None:
        try:
            async for entry in self.backend.follow(channel, after, epoch):
                self._last_real[channel] = time.monotonic()
                for sub in list(self._subs.get(channel, ())):
                    sub.deliver(entry.offset, entry)
        except asyncio.CancelledError:
            raise
        except EpochChanged:  # offsets started over: every subscriber must resubscribe (and learns the epoch)
            log.warning("realtime: %s started a new epoch; ending its subscribers' streams", channel)
            self._followers.pop(channel, None)
            for sub in list(self._subs.get(channel, ())):
                sub.conn.fail(Unavailable("the topic's history was reset (new epoch): resubscribe"))
                self.drop(sub.conn)
        except Exception:
            log.exception("realtime: follower of %s failed", channel)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(Exception):
                self._heartbeats()

    def _heartbeats(self) -> None:
        now = time.monotonic()
        for channel, subs in list(self._subs.items()):
            if not channel.endswith("/" + HEARTBEAT_TOPIC) or now - self._last_real.get(channel, 0) < QUIET_S:
                continue
            message = self._telemetry(len(subs))
            stamp = protocol.timestamp(protocol.now_ms())
            for sub in list(subs):
                if not sub.live:
                    continue
                _DELIVERED_SYNTHETIC.inc()
                sub.send(protocol.heartbeat_frame(sub.topic, sub.epoch, sub.last, message, stamp))

    def _telemetry(self, subscribers: int) -> struct_pb2.Value:
        """The heartbeat body: this process's own live figures, nothing invented."""
        body: dict[str, Any] = {
            "kind": "heartbeat",
            "source": "realtime",
            "backend": self.backend.name,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "connections": int(CONNECTIONS._value.get()),
            "subscribers": subscribers,
            "channels": len(self._subs),
        }
        value = struct_pb2.Value()
        value.struct_value.update(body)
        return value

    async def close(self) -> None:
        tasks = [*self._followers.values(), *([self._heartbeat] if self._heartbeat else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()
