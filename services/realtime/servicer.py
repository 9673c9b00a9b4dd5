"""RealtimeService: per-tenant topics over one bidi stream (the edge's /ws/realtime), plus unary Publish.

Client frames: subscribe (or `topic`, a synonym) with optional offset+epoch for recovery, unsubscribe,
publish {topic, msg}, ping. Server frames: message / subscribed / unsubscribed / published / pong / error.
A refused frame (bad topic, a viewer publishing, a policy's refusal) gets an error frame and the stream goes
on. A subscription a policy change took away gets a PERMISSION_DENIED error frame for its topic and ends;
the stream goes on with the others (access.py). The stream ends with UNAUTHENTICATED when the caller's
token expires, and with RESOURCE_EXHAUSTED for a slow client. The frames, how they are read and answered,
and the limits are protocol.py's (the edge's relay speaks the same protocol); this module joins, leaves and
publishes for them.

Relay is Connect for a whole edge process (internal): one subscription per channel however many sockets the
edge has on it, each message sent once; the edge fans out. Each socket's subscribe still comes here with
the socket's principal (topic checks, the policy decision, the starting offset, the history replay),
answered by id; the replay goes out as that id's message frames, before its "subscribed" frame. The id
then names that socket's subscription: the edge unsubscribes it by id when the socket leaves, and an error
frame with that id ends it (a policy change). A relay that falls protocol.RELAY_QUEUE_LIMIT frames behind is
ended with RESOURCE_EXHAUSTED (the edge then closes its sockets 1013 and they recover by offset).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf import struct_pb2

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core.context import TENANT_NAME, Principal, current_principal
from services.core.errors import InvalidArgument, PermissionDenied, ServiceError, Unauthenticated
from services.core.policy.access import check_topic
from services.realtime import protocol
from services.realtime.access import Access
from services.realtime.hub import CONNECTIONS, PUBLISHED, Connection, Hub, RelaySubscription, Subscription


def channel_of(tenant: str, topic: str) -> str:
    return f"{tenant}/{topic}"


class RealtimeServicer(realtime_pb2_grpc.RealtimeServiceServicer):
    def __init__(self, hub: Hub, access: Access) -> None:
        self._hub, self._access = hub, access

    async def Publish(
        self, request: realtime_pb2.PublishRequest, context: Any
    ) -> realtime_pb2.PublishResponse:
        return await self.publish(current_principal(), request)

    async def publish(
        self, principal: Principal, request: realtime_pb2.PublishRequest
    ) -> realtime_pb2.PublishResponse:
        offset, stamp = await self._append(principal, request.topic, request.msg)
        epoch, _ = await self._hub.backend.top(channel_of(principal.tenant, request.topic))
        return realtime_pb2.PublishResponse(
            topic=request.topic, offset=offset, epoch=epoch, timestamp=protocol.timestamp(stamp)
        )

    async def _append(self, principal: Principal, topic: str, msg: struct_pb2.Value) -> tuple[int, int]:
        if not principal.can_write:  # roles first: no policy lets a viewer publish
            raise PermissionDenied("publishing needs the developer or admin role")
        topic = check_topic(topic)
        payload = msg.SerializeToString()
        if len(payload) > protocol.MAX_MESSAGE_BYTES:
            raise InvalidArgument(f"message is over {protocol.MAX_MESSAGE_BYTES} bytes", field="msg")
        await self._access.admit(principal, "write", topic)
        entry = await self._hub.backend.append(channel_of(principal.tenant, topic), payload)
        PUBLISHED.labels(self._hub.backend.name).inc()
        return entry.offset, entry.timestamp_ms

    async def Connect(self, requests: Any, context: Any) -> AsyncIterator[realtime_pb2.ConnectResponse]:
        principal = current_principal()
        conn = Connection(self._hub.drop)
        CONNECTIONS.inc()
        client = _Stream(self, conn, principal)
        reader = asyncio.ensure_future(_read(requests, conn, client.handle))
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

    async def join(
        self, conn: Connection, who: Principal, topic: str, offset: int | None, epoch: str
    ) -> tuple[Subscription, realtime_pb2.ConnectResponse, list[Any]]:
        """Subscribes a Connect stream to `topic` for `who`: the subscription (live entries wait in it), its
        "subscribed" answer and the replay."""
        reader = await self._access.admit(who, "read", topic)  # the replay is part of the join
        sub = Subscription(conn, who.tenant, topic, channel_of(who.tenant, topic))
        sub.readers[0] = reader
        conn.subscriptions[topic] = sub
        self._access.watch(who.tenant, reader)
        await self._hub.attach(sub)  # live entries buffer in sub.pending from here on
        sub.epoch, top = await self._hub.backend.top(sub.channel)
        replay: list[Any] = []
        recovered = False
        if offset is not None and protocol.recovers(offset, epoch, sub.epoch):
            history = await self._hub.backend.since(sub.channel, offset)
            replay, recovered = [(e.offset, e) for e in history.entries], history.recovered
        sub.last = protocol.start_after(offset, epoch, sub.epoch, top)
        return sub, protocol.subscribed(topic, top, sub.epoch, recovered), replay

    def detach(self, sub: Subscription) -> None:
        self._hub.detach(sub)

    async def Relay(self, requests: Any, context: Any) -> AsyncIterator[realtime_pb2.RelayResponse]:
        conn = Connection(self._hub.drop, limit=protocol.RELAY_QUEUE_LIMIT)

        async def handle(request: realtime_pb2.RelayRequest) -> None:
            try:
                await self._relay_request(request, conn)
            except ServiceError as exc:
                conn.offer(
                    protocol.relayed(request.tenant, protocol.error_frame(exc, request.topic), request.id)
                )

        reader = asyncio.ensure_future(_read(requests, conn, handle))
        try:
            while (frame := await conn.next(None)) is not None:
                yield frame
        finally:
            reader.cancel()
            self._hub.drop(conn)

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
        offset = request.offset if request.HasField("offset") else None
        if protocol.recovers(offset, request.epoch, epoch):
            history = await self._hub.backend.since(channel, request.offset)
            recovered, entries = history.recovered, history.entries
        if sub.readers.get(request.id) is not reader:
            return  # its access was revoked meanwhile: that error frame (with its id) went out instead
        for entry in entries:
            frame = protocol.message_frame(request.topic, epoch, entry)
            conn.offer(protocol.relayed(request.tenant, frame, request.id))
        answer = protocol.subscribed(request.topic, top, epoch, recovered)
        conn.offer(protocol.relayed(request.tenant, answer, request.id))

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


class _Stream(protocol.Client[Subscription]):
    """A client's Connect stream: its subscriptions are its connection's, decided for its principal."""

    def __init__(self, servicer: RealtimeServicer, conn: Connection, who: Principal) -> None:
        super().__init__(conn.subscriptions)
        self._servicer, self._conn, self._who = servicer, conn, who

    def send(self, frame: protocol.Frame) -> None:
        self._conn.offer(frame)

    def checked(self, topic: str) -> str:
        return check_topic(topic)

    async def join(self, topic: str, offset: int | None, epoch: str) -> None:
        sub, answer, replay = await self._servicer.join(self._conn, self._who, topic, offset, epoch)
        self.go_live(topic, sub, answer, replay)

    def leave(self, sub: Subscription) -> None:
        self._servicer.detach(sub)

    async def publish(self, request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        return await self._servicer.publish(self._who, request)


async def _read(requests: Any, conn: Connection, handle: Callable[[Any], Awaitable[None]]) -> None:
    """Answers a stream's requests in order; the client's half-close ends the stream once its frames went
    out, and an unexpected failure ends it with INTERNAL (logged by the kit)."""
    try:
        async for request in requests:
            await handle(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        conn.fail(exc)
    else:
        conn.end()


def _remaining(principal: Principal) -> float | None:
    """Seconds until the token expires (None: no expiry claim)."""
    if not principal.expires_at:
        return None
    return max(principal.expires_at - time.time(), 0.0)
