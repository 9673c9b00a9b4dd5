"""WebSockets whose contract names a relay (/ws/realtime): one upstream stream per edge process, local fan-out.

The per-socket bridge (websocket.py) opens one gRPC stream per socket, so every message crosses gRPC once per
subscriber; with 1,000 subscribers that, not the network, is the limit. Here the edge keeps ONE Relay stream
to the realtime service, subscribes each channel (tenant, topic) once however many sockets it has on it, and
writes each message to its sockets itself, encoded to JSON once.

Per socket, frames and rules are those of RealtimeService.Connect (protos/launchpad/realtime/v1):
- The token (`token` query parameter or Authorization header) is verified before the socket is accepted
  (refused: error frame, close 1008) and the socket is closed 1008 when the token expires.
- subscribe / topic, with offset (+epoch) to recover; unsubscribe; publish (the unary Publish RPC with the
  socket's own token, so the service checks roles); ping. A refused frame gets an error frame and the socket
  stays open. At most MAX_TOPICS subscriptions per socket.
- Every subscribe is answered by the service (topic checks, the policy decision for the socket's principal,
  the starting offset, the replay of missed messages); live messages that arrive meanwhile wait in the
  subscription, and each offset is delivered once, in order. The edge decides no policy itself.
- A subscription a policy change took away (the service sends an error frame with the id of that socket's
  subscribe) ends for that socket alone: it gets the PERMISSION_DENIED error frame naming the topic, like a
  refused subscribe, and the socket stays open, even with no topic left (as Centrifugo's unsubscribe push
  keeps the connection): the client may subscribe again, to this topic once a policy allows it or to others.
- Backpressure: each socket has a bounded outbox of QUEUE_LIMIT frames and one writer task; fan-out never
  waits for a socket. A socket whose outbox is full is the slow one: its outbox is dropped, it gets an error
  frame RESOURCE_EXHAUSTED and close 1013, and launchpad_edge_realtime_slow_disconnects_total goes up. The
  other sockets are not slowed.
- When the relay fails (realtime down or restarting), every socket on it gets an error frame and close 1013;
  clients reconnect with their last offsets and recover from the history.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from edge import codec
from edge.clients import BackendCallFailed, call_metadata, client_ip
from edge.errors import request_id_of
from edge.routes import EdgeContext, WebSocketSpec
from edge.websocket import OPEN_SOCKETS, Disconnected, Session, authenticate_socket, close_code
from services.core import internal
from services.core.context import Principal
from services.core.contracts import method_policy
from services.core.errors import (
    Code,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger("launchpad.edge.fanout")

QUEUE_LIMIT = 256  # frames waiting for one socket
MAX_TOPICS = 100  # subscriptions per socket

SLOW_DISCONNECTS = Counter(
    "launchpad_edge_realtime_slow_disconnects_total", "Sockets closed because their outbox was full"
)
RELAY_MESSAGES = Counter("launchpad_edge_relay_messages_total", "Channel messages received on the relay")
FANNED_OUT = Counter("launchpad_edge_relay_frames_total", "Message frames queued for sockets")
RELAY_CHANNELS = Gauge("launchpad_edge_relay_channels", "Channels this edge process relays")

Key = tuple[str, str]  # (tenant, topic)
Pending = tuple[int, bool, str]  # (offset, synthetic, JSON text)


class Outbox:
    """One socket's frames, in order: bounded, written by one writer task (`run`)."""

    def __init__(self, send: Send) -> None:
        self.frames: deque[str] = deque()
        self.failure: ServiceError | None = None
        self._send = send
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, text: str) -> None:
        if self.failure is not None:
            return
        if len(self.frames) >= QUEUE_LIMIT:
            self.frames.clear()
            SLOW_DISCONNECTS.inc()
            self.fail(ResourceExhausted(f"slow client: more than {QUEUE_LIMIT} frames waiting; reconnect"))
            return
        self.frames.append(text)
        self._wake()

    def fail(self, failure: ServiceError) -> None:
        if self.failure is None:
            self.failure = failure
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> ServiceError:
        """Writes frames as they come; returns the failure that ends the socket (after what was queued)."""
        loop = asyncio.get_running_loop()
        while True:
            while self.frames:
                await self._send({"type": "websocket.send", "text": self.frames.popleft()})
            if self.failure is not None:
                return self.failure
            self._waiter = loop.create_future()
            await self._waiter


class Subscription:
    """One socket on one channel: live frames wait in `pending` until the service answered the subscribe.
    `id` is that subscribe's id on the relay (it names the subscription to the service until it leaves);
    `owner` the socket's subscriptions by topic (a revoked one leaves it)."""

    __slots__ = ("id", "key", "last", "outbox", "owner", "pending")

    def __init__(self, outbox: Outbox, key: Key, owner: dict[str, Subscription] | None = None) -> None:
        self.outbox, self.key = outbox, key
        self.owner = owner if owner is not None else {}
        self.id = 0
        self.last = 0
        self.pending: list[Pending] | None = []

    def deliver(self, offset: int, synthetic: bool, text: str) -> None:
        if self.pending is not None:
            if not synthetic:  # a heartbeat is only for live subscriptions, like the service's
                self.pending.append((offset, synthetic, text))
            return
        if not synthetic:
            if offset <= self.last:
                return  # already delivered (replay and live overlap)
            self.last = offset
        self.outbox.offer(text)

    def start(self, replay: list[Pending]) -> None:
        """Delivers the replay, then what arrived meanwhile, and goes live."""
        pending, self.pending = self.pending or [], None
        for offset, synthetic, text in [*replay, *pending]:
            self.deliver(offset, synthetic, text)


@dataclass
class _Waiting:
    """A subscribe sent on the relay: its replay frames, then its answer."""

    answer: asyncio.Future[Any]
    replay: list[Pending] = field(default_factory=list)


class Relay:
    """This edge process's one Relay stream: opened on first use, reopened after it fails."""

    def __init__(self, ctx: EdgeContext, service: str, method: MethodDescriptor, secret: str) -> None:
        self._ctx, self._method = ctx, method
        self._service = service
        self._secret = secret
        self._encode = codec.encoder(method.output_type.fields_by_name["frame"].message_type)
        self._request_cls = codec.message_class(method.input_type)
        self._channels: dict[Key, set[Subscription]] = {}
        self._members: dict[int, Subscription] = {}  # by the id of their subscribe, while subscribed
        self._waiting: dict[int, _Waiting] = {}
        self._ids = itertools.count(1)
        self._outgoing: asyncio.Queue[Any] | None = None
        self._reader: asyncio.Future[None] | None = None

    def text(self, frame: Any) -> str:
        return orjson.dumps(self._encode(frame)).decode()

    async def subscribe(
        self, sub: Subscription, principal: Principal, offset: int | None, epoch: str
    ) -> tuple[Any, list[Pending]]:
        """Adds `sub` to its channel (live frames wait in it) and asks the service, for the socket's
        principal: the "subscribed" frame and the replay, or the service's refusal (ServiceError); a broken
        relay also fails the socket."""
        outgoing = self._open()
        self._channels.setdefault(sub.key, set()).add(sub)
        RELAY_CHANNELS.set(len(self._channels))
        request_id = sub.id = next(self._ids)
        self._members[request_id] = sub
        waiting = self._waiting[request_id] = _Waiting(asyncio.get_running_loop().create_future())
        tenant, topic = sub.key
        request = self._request_cls(
            tenant=tenant,
            topic=topic,
            id=request_id,
            epoch=epoch,
            subject=principal.subject,
            roles=list(principal.roles),
        )
        if offset is not None:
            request.offset = offset
        outgoing.put_nowait(request)
        try:
            return await waiting.answer, waiting.replay
        finally:
            self._waiting.pop(request_id, None)

    def detach(self, sub: Subscription) -> None:
        """The socket left the channel: the service forgets it (and stops following the channel when it was
        the edge's last socket there)."""
        if not self._forget(sub):
            return  # already gone (revoked, or with a broken relay)
        if self._outgoing is not None:
            tenant, topic = sub.key
            leave = self._request_cls(tenant=tenant, topic=topic, id=sub.id, unsubscribe=True)
            self._outgoing.put_nowait(leave)

    def _forget(self, sub: Subscription) -> bool:
        subs = self._channels.get(sub.key)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if self._members.get(sub.id) is sub:
            del self._members[sub.id]
        if not subs:
            del self._channels[sub.key]
            RELAY_CHANNELS.set(len(self._channels))
        return True

    def _open(self) -> asyncio.Queue[Any]:
        if self._outgoing is not None:
            return self._outgoing
        outgoing: asyncio.Queue[Any] = asyncio.Queue()
        metadata = (("x-request-id", f"relay-{uuid.uuid4().hex}"), (internal.METADATA_KEY, self._secret))
        stub = self._ctx.multicallable(self._service, self._method)  # channels live in the serving loop
        call = stub(_drain(outgoing), metadata=metadata)
        self._outgoing = outgoing
        self._reader = asyncio.ensure_future(self._read(call, outgoing))
        return outgoing

    async def _read(self, call: Any, outgoing: asyncio.Queue[Any]) -> None:
        failure: ServiceError
        try:
            async for response in call:
                self._dispatch(response)
            failure = Unavailable(f"the {self._service} service ended the relay; reconnect")
        except grpc.aio.AioRpcError as exc:
            failure = BackendCallFailed(exc, self._service)
        except Exception:
            log.exception("edge: the realtime relay failed")
            failure = ServiceError("the realtime relay failed; reconnect", code=Code.INTERNAL)
        finally:
            call.cancel()
            outgoing.put_nowait(None)  # ends the request iterator
        self._broken(failure)

    def _dispatch(self, response: Any) -> None:
        frame = response.frame
        if response.id:
            self._answer(response.id, frame)
            return
        subs = self._channels.get((response.tenant, frame.topic))
        if not subs:
            return
        RELAY_MESSAGES.inc()
        text = self.text(frame)  # once, however many sockets
        offset, synthetic = frame.offset, frame.synthetic
        for sub in subs:  # deliver() never awaits nor changes the set
            sub.deliver(offset, synthetic, text)
        FANNED_OUT.inc(len(subs))

    def _answer(self, request_id: int, frame: Any) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.answer.done():
            member = self._members.get(request_id)
            if member is not None and frame.type == "error":
                self._revoked(member, frame)
            return
        if frame.type == "message":
            waiting.replay.append((frame.offset, False, self.text(frame)))
        elif frame.type == "error":
            code = Code.__members__.get(frame.error.code, Code.INTERNAL)
            waiting.answer.set_exception(ServiceError(frame.error.message, code=code))
        else:
            waiting.answer.set_result(frame)

    def _revoked(self, sub: Subscription, frame: Any) -> None:
        """The service ended this socket's subscription (a policy change): the socket alone gets the error
        frame for the topic and leaves the channel; the service already forgot it."""
        self._forget(sub)
        topic = sub.key[1]
        if sub.owner.get(topic) is sub:
            del sub.owner[topic]
        sub.outbox.offer(self.text(frame))

    def _broken(self, failure: ServiceError) -> None:
        """Fails every socket on the relay and every subscribe in flight; the next subscribe reopens it."""
        self._outgoing = None
        for waiting in self._waiting.values():
            if not waiting.answer.done():
                waiting.answer.set_exception(failure)
        for subs in self._channels.values():
            for sub in subs:
                sub.outbox.fail(failure)
        self._channels.clear()
        self._members.clear()
        RELAY_CHANNELS.set(0)


async def _drain(outgoing: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (request := await outgoing.get()) is not None:
        yield request


@dataclass
class _Socket:
    session: Session
    outbox: Outbox
    principal: Principal
    metadata: tuple[tuple[str, str], ...]
    subs: dict[str, Subscription] = field(default_factory=dict)


class FanoutSocket:
    """The ASGI app of a WebSocket route whose contract names a relay."""

    def __init__(self, spec: WebSocketSpec, ctx: EdgeContext, secret: str) -> None:
        service = spec.method.containing_service
        self.spec, self.ctx = spec, ctx
        self.relay = Relay(ctx, spec.service, service.methods_by_name[spec.policy.websocket_relay], secret)
        self._publish_method = publish = service.methods_by_name["Publish"]
        self._publish_timeout_s = method_policy(publish).timeout_ms / 1000
        self._response = codec.message_class(spec.method.output_type)
        self._request_cls = codec.message_class(spec.method.input_type)
        self._decode = codec.decoder(spec.method.input_type)
        self._encode = codec.encoder(spec.method.output_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        session = Session(ws, self._request_cls, self._decode, self._encode)
        request_id = request_id_of(scope) or uuid.uuid4().hex
        try:
            principal, token = await authenticate_socket(self.ctx, ws)
        except ServiceError as exc:  # refused before any frame is read (close 1008)
            await ws.accept()
            await session.fail(exc.code, exc.message)
            return
        await ws.accept()
        metadata = call_metadata(request_id, principal, token, client_ip(scope))
        sock = _Socket(session, Outbox(send), principal, metadata)
        gauge = OPEN_SOCKETS.labels(self.spec.path)
        gauge.inc()
        try:
            await self._serve(sock, request_id)
        finally:
            gauge.dec()
            for sub in sock.subs.values():
                self.relay.detach(sub)

    async def _serve(self, sock: _Socket, request_id: str) -> None:
        expiry = _expire_at(sock)
        writer = asyncio.ensure_future(sock.outbox.run())
        reader = asyncio.ensure_future(self._read(sock))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if expiry is not None:
                expiry.cancel()
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
        if writer.done() and not writer.cancelled() and writer.exception() is None:
            failure = writer.result()
            await sock.session.fail(failure.code, failure.message)
        elif reader.done() and not reader.cancelled() and reader.exception() is not None:
            exc = reader.exception()
            if not isinstance(exc, Disconnected):
                log.error("edge: realtime socket failed", exc_info=exc, extra={"request_id": request_id})
                await sock.session.fail(Code.INTERNAL, f"internal error (request id {request_id})")
        else:
            await sock.session.close(close_code(Code.CANCELLED))

    async def _read(self, sock: _Socket) -> None:
        while True:
            try:
                request = await sock.session.next_request()
            except Exception as exc:
                raise Disconnected from exc  # the client went away
            try:
                await self._handle(sock, request)
            except ServiceError as exc:
                if sock.outbox.failure is None:  # else the writer reports the failure and closes
                    topic = request.subscribe or request.topic or request.unsubscribe
                    self._offer(sock, self._error(exc, topic))

    async def _handle(self, sock: _Socket, request: Any) -> None:
        if request.ping:
            self._offer(sock, self._response(type="pong", timestamp=_now()))
        elif request.subscribe or request.topic:
            offset = request.offset if request.HasField("offset") else None
            await self._subscribe(sock, request.subscribe or request.topic, offset, request.epoch)
        elif request.unsubscribe:
            sub = sock.subs.pop(request.unsubscribe, None)
            if sub is not None:
                self.relay.detach(sub)
            self._offer(sock, self._response(type="unsubscribed", topic=request.unsubscribe))
        elif request.HasField("publish"):
            await self._publish_frame(sock, request.publish)
        else:
            raise InvalidArgument("empty frame: set subscribe, topic, unsubscribe, publish or ping")

    async def _subscribe(self, sock: _Socket, topic: str, offset: int | None, epoch: str) -> None:
        old = sock.subs.pop(topic, None)
        if old is not None:
            self.relay.detach(old)
        elif len(sock.subs) >= MAX_TOPICS:
            raise ResourceExhausted(f"at most {MAX_TOPICS} topics per connection")
        sub = sock.subs[topic] = Subscription(sock.outbox, (sock.principal.tenant, topic), sock.subs)
        try:
            subscribed, replay = await self.relay.subscribe(sub, sock.principal, offset, epoch)
        except ServiceError:
            del sock.subs[topic]
            self.relay.detach(sub)
            raise
        if sock.subs.get(topic) is not sub:
            return  # revoked as it was answered: the socket got that error frame instead
        recovering = offset is not None and (not epoch or epoch == subscribed.epoch)
        # an offset from the future (another epoch in all but name) starts from now, as on the service
        sub.last = min(offset, subscribed.offset) if recovering and offset is not None else subscribed.offset
        sock.outbox.offer(self.relay.text(subscribed))
        sub.start(replay)

    async def _publish_frame(self, sock: _Socket, publish: Any) -> None:
        try:
            stub = self.ctx.multicallable(self.spec.service, self._publish_method)
            published = await stub(publish, metadata=sock.metadata, timeout=self._publish_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise BackendCallFailed(exc, self.spec.service) from None
        frame = self._response(
            type="published",
            topic=published.topic,
            offset=published.offset,
            epoch=published.epoch,
            timestamp=published.timestamp,
        )
        self._offer(sock, frame)

    def _error(self, exc: ServiceError, topic: str) -> Any:
        frame = self._response(type="error", topic=topic)
        frame.error.code, frame.error.message = exc.code.name, exc.message
        return frame

    def _offer(self, sock: _Socket, frame: Any) -> None:
        sock.outbox.offer(orjson.dumps(self._encode(frame)).decode())


def _expire_at(sock: _Socket) -> asyncio.TimerHandle | None:
    """Closes the socket 1008 when its token expires (the service did this for per-socket streams)."""
    if not sock.principal.expires_at:
        return None
    delay = max(sock.principal.expires_at - time.time(), 0.0)
    expired = Unauthenticated("token expired: reconnect with a fresh token")
    return asyncio.get_running_loop().call_later(delay, sock.outbox.fail, expired)


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp
