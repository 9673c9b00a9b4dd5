"""RealtimeService: per-tenant topics over one bidi stream (the edge's /ws/realtime), plus unary Publish.

Client frames: subscribe (or `topic`, a synonym) with optional offset+epoch for recovery, unsubscribe,
publish {topic, msg}, ping. Server frames: message / subscribed / unsubscribed / published / pong / error.
A refused frame (bad topic, a viewer publishing) gets an error frame and the stream goes on. The stream ends
with UNAUTHENTICATED when the caller's token expires, and with RESOURCE_EXHAUSTED for a slow client (the rule
is in hub.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core.context import Principal, current_principal
from services.core.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)
from services.realtime.hub import CONNECTIONS, PUBLISHED, Connection, Hub, Subscription, timestamp

TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_TOPICS = 100  # subscriptions per connection
MAX_MESSAGE_BYTES = 64 * 1024

Response = realtime_pb2.ConnectResponse


def _topic(name: str) -> str:
    if not TOPIC.match(name):
        raise InvalidArgument(
            f"topic {name[:64]!r} is not valid: letters, digits and . _ : -, at most 128 characters",
            field="topic",
        )
    return name


def channel_of(tenant: str, topic: str) -> str:
    return f"{tenant}/{topic}"


def _error(exc: ServiceError, topic: str = "") -> Response:
    return Response(
        type="error", topic=topic, error=realtime_pb2.FrameError(code=exc.code.name, message=exc.message)
    )


class RealtimeServicer(realtime_pb2_grpc.RealtimeServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def Publish(
        self, request: realtime_pb2.PublishRequest, context: Any
    ) -> realtime_pb2.PublishResponse:
        principal = current_principal()
        offset, _ = await self._publish(principal, request.topic, request.msg)
        return realtime_pb2.PublishResponse(topic=request.topic, offset=offset)

    async def _publish(self, principal: Principal, topic: str, msg: struct_pb2.Value) -> tuple[int, int]:
        if not principal.can_write:
            raise PermissionDenied("publishing needs the developer or admin role")
        payload = msg.SerializeToString()
        if len(payload) > MAX_MESSAGE_BYTES:
            raise InvalidArgument(f"message is over {MAX_MESSAGE_BYTES} bytes", field="msg")
        entry = await self._hub.backend.append(channel_of(principal.tenant, _topic(topic)), payload)
        PUBLISHED.labels(self._hub.backend.name).inc()
        return entry.offset, entry.timestamp_ms

    async def Connect(self, requests: Any, context: Any) -> AsyncIterator[Response]:
        principal = current_principal()
        conn = Connection(self._hub.drop)
        CONNECTIONS.inc()
        reader = asyncio.ensure_future(self._read(requests, conn, principal))
        try:
            while True:
                try:
                    frame = await conn.next(_remaining(principal))
                except TimeoutError:
                    raise Unauthenticated("token expired: reconnect with a fresh token") from None
                if frame is None:
                    return
                yield frame
        finally:
            reader.cancel()
            self._hub.drop(conn)
            CONNECTIONS.dec()

    async def _read(self, requests: Any, conn: Connection, principal: Principal) -> None:
        try:
            async for request in requests:
                try:
                    await self._handle(request, conn, principal)
                except ServiceError as exc:
                    conn.offer(_error(exc, request.subscribe or request.topic or request.unsubscribe))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an unexpected failure ends the stream (INTERNAL, logged by the kit)
            conn.fail(exc)
        else:
            conn.end()  # the client half-closed: nothing more to do

    async def _handle(self, request: realtime_pb2.ConnectRequest, conn: Connection, who: Principal) -> None:
        if request.ping:
            conn.offer(Response(type="pong", timestamp=timestamp(int(time.time() * 1000))))
        elif request.subscribe or request.topic:
            offset = request.offset if request.HasField("offset") else None
            await self._subscribe(
                conn, who, _topic(request.subscribe or request.topic), offset, request.epoch
            )
        elif request.unsubscribe:
            sub = conn.subscriptions.pop(request.unsubscribe, None)
            if sub is not None:
                self._hub.detach(sub)
            conn.offer(Response(type="unsubscribed", topic=request.unsubscribe))
        elif request.HasField("publish"):
            topic = request.publish.topic
            offset, stamp = await self._publish(who, topic, request.publish.msg)
            epoch, _ = await self._hub.backend.top(channel_of(who.tenant, topic))
            conn.offer(
                Response(
                    type="published", topic=topic, offset=offset, epoch=epoch, timestamp=timestamp(stamp)
                )
            )
        else:
            raise InvalidArgument("empty frame: set subscribe, topic, unsubscribe, publish or ping")

    async def _subscribe(
        self, conn: Connection, who: Principal, topic: str, offset: int | None, epoch: str
    ) -> None:
        old = conn.subscriptions.pop(topic, None)
        if old is not None:
            self._hub.detach(old)
        elif len(conn.subscriptions) >= MAX_TOPICS:
            raise ResourceExhausted(f"at most {MAX_TOPICS} topics per connection")
        sub = Subscription(conn, topic, channel_of(who.tenant, topic))
        conn.subscriptions[topic] = sub
        await self._hub.attach(sub)  # live entries buffer in sub.pending from here on
        sub.epoch, top = await self._hub.backend.top(sub.channel)
        replay: list[Any] = []
        recovered = False
        if offset is not None and (not epoch or epoch == sub.epoch):
            history = await self._hub.backend.since(sub.channel, offset)
            replay, recovered = history.entries, history.recovered
            sub.last = offset
        else:
            sub.last = top
        if conn.subscriptions.get(topic) is not sub:
            return  # unsubscribed or dropped meanwhile
        conn.offer(Response(type="subscribed", topic=topic, offset=top, epoch=sub.epoch, recovered=recovered))
        sub.start(replay)


def _remaining(principal: Principal) -> float | None:
    """Seconds until the token expires (None: no expiry claim)."""
    if not principal.expires_at:
        return None
    return max(principal.expires_at - time.time(), 0.0)
