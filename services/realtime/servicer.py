"""RealtimeService: per-tenant topics over one bidi stream (the edge's /ws/realtime), plus unary Publish.

Client frames: subscribe (or `topic`, a synonym) with optional offset+epoch for recovery, unsubscribe,
publish {topic, msg}, ping. Server frames: message / subscribed / unsubscribed / published / pong / error.
A refused frame (bad topic, a viewer publishing, a policy's refusal) gets an error frame and the stream goes
on. A subscription a policy change took away gets a PERMISSION_DENIED error frame for its topic and ends;
the stream goes on with the others (access.py). The stream ends with UNAUTHENTICATED when the caller's
token expires, and with RESOURCE_EXHAUSTED for a slow client (the rule is in hub.py).

Relay is Connect for a whole edge process (internal): one subscription per channel however many sockets the
edge has on it, each message sent once; the edge fans out. Each socket's subscribe still comes here with
the socket's principal (topic checks, the policy decision, the starting offset, the history replay),
answered by id; the replay goes out as that id's message frames, before its "subscribed" frame. The id
then names that socket's subscription: the edge unsubscribes it by id when the socket leaves, and an error
frame with that id ends it (a policy change). A relay that falls RELAY_QUEUE_LIMIT frames behind is ended
with RESOURCE_EXHAUSTED (the edge then closes its sockets 1013 and they recover by offset).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core.context import TENANT_NAME, Principal, current_principal
from services.core.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)
from services.core.policy.access import check_topic
from services.realtime.access import Access
from services.realtime.hub import (
    CONNECTIONS,
    PUBLISHED,
    Connection,
    Hub,
    RelaySubscription,
    Subscription,
    error_frame,
    message_frame,
    timestamp,
)

MAX_TOPICS = 100  # subscriptions per connection
MAX_MESSAGE_BYTES = 64 * 1024
RELAY_QUEUE_LIMIT = 16_384  # frames an edge's relay may fall behind (the edge reads as fast as it can)

Response = realtime_pb2.ConnectResponse


def channel_of(tenant: str, topic: str) -> str:
    return f"{tenant}/{topic}"


class RealtimeServicer(realtime_pb2_grpc.RealtimeServiceServicer):
    def __init__(self, hub: Hub, access: Access) -> None:
        self._hub, self._access = hub, access

    async def Publish(
        self, request: realtime_pb2.PublishRequest, context: Any
    ) -> realtime_pb2.PublishResponse:
        principal = current_principal()
        offset, stamp = await self._publish(principal, request.topic, request.msg)
        epoch, _ = await self._hub.backend.top(channel_of(principal.tenant, request.topic))
        return realtime_pb2.PublishResponse(
            topic=request.topic, offset=offset, epoch=epoch, timestamp=timestamp(stamp)
        )

    async def _publish(self, principal: Principal, topic: str, msg: struct_pb2.Value) -> tuple[int, int]:
        if not principal.can_write:  # roles first: no policy lets a viewer publish
            raise PermissionDenied("publishing needs the developer or admin role")
        topic = check_topic(topic)
        payload = msg.SerializeToString()
        if len(payload) > MAX_MESSAGE_BYTES:
            raise InvalidArgument(f"message is over {MAX_MESSAGE_BYTES} bytes", field="msg")
        await self._access.admit(principal, "write", topic)
        entry = await self._hub.backend.append(channel_of(principal.tenant, topic), payload)
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
                    conn.offer(error_frame(exc, request.subscribe or request.topic or request.unsubscribe))
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
                conn, who, check_topic(request.subscribe or request.topic), offset, request.epoch
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
        reader = await self._access.admit(who, "read", topic)  # the replay is part of the join
        sub = Subscription(conn, who.tenant, topic, channel_of(who.tenant, topic))
        sub.readers[0] = reader
        conn.subscriptions[topic] = sub
        self._access.watch(who.tenant, reader)
        await self._hub.attach(sub)  # live entries buffer in sub.pending from here on
        sub.epoch, top = await self._hub.backend.top(sub.channel)
        replay: list[Any] = []
        recovered = False
        if offset is not None and (not epoch or epoch == sub.epoch):
            history = await self._hub.backend.since(sub.channel, offset)
            replay, recovered = history.entries, history.recovered
            sub.last = min(offset, top)  # an offset from the future (another epoch in all but name): from now
        else:
            sub.last = top
        if conn.subscriptions.get(topic) is not sub:
            return  # unsubscribed, dropped or its access revoked (that error frame went out) meanwhile
        conn.offer(Response(type="subscribed", topic=topic, offset=top, epoch=sub.epoch, recovered=recovered))
        sub.start(replay)

    async def Relay(self, requests: Any, context: Any) -> AsyncIterator[realtime_pb2.RelayResponse]:
        conn = Connection(self._hub.drop, limit=RELAY_QUEUE_LIMIT)
        reader = asyncio.ensure_future(self._read_relay(requests, conn))
        try:
            while (frame := await conn.next(None)) is not None:
                yield frame
        finally:
            reader.cancel()
            self._hub.drop(conn)

    async def _read_relay(self, requests: Any, conn: Connection) -> None:
        try:
            async for request in requests:
                try:
                    await self._relay_request(request, conn)
                except ServiceError as exc:
                    frame = error_frame(exc, request.topic)
                    conn.offer(realtime_pb2.RelayResponse(tenant=request.tenant, id=request.id, frame=frame))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            conn.fail(exc)
        else:
            conn.end()

    async def _relay_request(self, request: realtime_pb2.RelayRequest, conn: Connection) -> None:
        if not TENANT_NAME.match(request.tenant):
            raise InvalidArgument("relay request without a valid tenant", field="tenant")
        channel = channel_of(request.tenant, check_topic(request.topic))
        if request.unsubscribe:
            self._relay_leave(conn, channel, request.id)
            return
        # The edge verified the socket's token; the relay's internal credential vouches for the edge.
        who = Principal(subject=request.subject, tenant=request.tenant, roles=tuple(request.roles))
        reader = await self._access.admit(who, "read", request.topic)
        sub = conn.subscriptions.get(channel)
        if sub is None:  # the edge's first socket on this channel: follow it from now on
            sub = conn.subscriptions[channel] = RelaySubscription(
                conn, request.tenant, request.topic, channel
            )
            sub.readers[request.id] = reader
            self._access.watch(request.tenant, reader)
            await self._hub.attach(sub)
            sub.epoch, sub.last = await self._hub.backend.top(channel)
            sub.start([])
        else:
            sub.readers[request.id] = reader
            self._access.watch(request.tenant, reader)
        epoch, top = await self._hub.backend.top(channel)
        recovered = False
        entries: list[Any] = []
        if request.HasField("offset") and (not request.epoch or request.epoch == epoch):
            history = await self._hub.backend.since(channel, request.offset)
            recovered, entries = history.recovered, history.entries
        if sub.readers.get(request.id) is not reader:
            return  # its access was revoked meanwhile: that error frame (with its id) went out instead
        for entry in entries:
            frame = message_frame(request.topic, epoch, entry)
            conn.offer(realtime_pb2.RelayResponse(tenant=request.tenant, id=request.id, frame=frame))
        subscribed = Response(
            type="subscribed", topic=request.topic, offset=top, epoch=epoch, recovered=recovered
        )
        conn.offer(realtime_pb2.RelayResponse(tenant=request.tenant, id=request.id, frame=subscribed))

    def _relay_leave(self, conn: Connection, channel: str, key: int) -> None:
        """Socket `key` left the channel (key 0: the edge leaves the whole channel); the relay stops
        following it when no socket is left."""
        sub = conn.subscriptions.get(channel)
        if sub is None:
            return
        if key:
            sub.readers.pop(key, None)
            if sub.readers:
                return
        del conn.subscriptions[channel]
        self._hub.detach(sub)


def _remaining(principal: Principal) -> float | None:
    """Seconds until the token expires (None: no expiry claim)."""
    if not principal.expires_at:
        return None
    return max(principal.expires_at - time.time(), 0.0)
