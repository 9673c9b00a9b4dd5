"""WebSockets whose contract names a relay (/ws/realtime): one upstream stream per edge process, local fan-out.

The per-socket bridge (websocket.py) opens one gRPC stream per socket, so every message crosses gRPC once per
subscriber; with 1,000 subscribers that, not the network, is the limit. Here the edge keeps ONE Relay stream
to the realtime service, subscribes each channel (tenant, topic) once however many sockets it has on it, and
writes each message to its sockets itself, encoded to JSON once.

Per socket, frames and rules are those of RealtimeService.Connect, from services/realtime/protocol.py (the
service's streams speak the same module; this one keeps the sockets, the relay and the routing):
- The token (`token` query parameter or Authorization header) is verified before the socket is accepted
  (refused: error frame, close 1008) and the socket is closed 1008 when the token expires.
- subscribe / topic, with offset (+epoch) to recover; unsubscribe; publish (the unary RPC the contract's
  websocket option names, with the socket's own token, so the service checks roles); ping. A refused frame
  gets an error frame and the socket stays open. At most protocol.MAX_TOPICS subscriptions per socket.
- Two error frames: a refused client frame gets the protocol's (protocol.error_frame:
  {"type": "error", "topic", "error": {"code", "message"}}, no details: the contract's FrameError has none);
  what ends or refuses the socket itself, and a frame that is not valid JSON, get the edge's
  (errors.socket_error_text: {"type": "error", "error": {"code", "message", "details"?}}, no topic).
- Every subscribe is answered by the service (topic checks, the policy decision for the socket's principal,
  the starting offset, the replay of missed messages); live messages that arrive meanwhile wait in the
  subscription, and each offset is delivered once, in order. The edge decides no policy itself.
- A subscription a policy change took away (the service sends an error frame with the id of that socket's
  subscribe) ends for that socket alone: it gets the PERMISSION_DENIED error frame naming the topic, like a
  refused subscribe, and the socket stays open, even with no topic left (as Centrifugo's unsubscribe push
  keeps the connection): the client may subscribe again, to this topic once a policy allows it or to others.
- Backpressure: each socket has a bounded outbox (protocol.Outbox) and one writer task; fan-out never
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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from prometheus_client import Counter, Gauge
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from edge import codec
from edge.clients import call_metadata, client_ip
from edge.errors import BackendCallFailed, DescribedError, api_error, close_code, request_id_of
from edge.transcoding.context import EdgeContext
from edge.transcoding.specs import WebSocketSpec
from edge.websocket import OPEN_SOCKETS, Disconnected, Session, authenticate_socket
from launchpad.realtime.v1 import realtime_pb2
from services.core import internal
from services.core.context import Principal
from services.core.contracts import method_policy
from services.core.errors import Code, ServiceError, Unauthenticated, Unavailable
from services.realtime import protocol

log = logging.getLogger("launchpad.edge.fanout")

SLOW_DISCONNECTS = Counter(
    "launchpad_edge_realtime_slow_disconnects_total", "Sockets closed because their outbox was full"
)
RELAY_MESSAGES = Counter("launchpad_edge_relay_messages_total", "Channel messages received on the relay")
FANNED_OUT = Counter("launchpad_edge_relay_frames_total", "Message frames queued for sockets")
RELAY_CHANNELS = Gauge("launchpad_edge_relay_channels", "Channels this edge process relays")

Key = tuple[str, str]  # (tenant, topic)
Outbox = protocol.Outbox[str]  # a socket's frames, as JSON text
Pending = tuple[int, str]  # (offset, JSON text)


class Member(protocol.Subscription[str]):
    """One socket on one channel (each offset once, in order). `id` is its subscribe's id on the relay (it
    names the subscription to the service until it leaves); `owner` the socket's subscriptions by topic (a
    revoked one leaves it)."""

    def __init__(self, outbox: Outbox, key: Key, owner: dict[str, Member] | None = None) -> None:
        super().__init__()
        self.outbox, self.key = outbox, key
        self.owner = owner if owner is not None else {}
        self.id = 0

    def emit(self, item: str) -> None:
        self.outbox.offer(item)


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
        self._channels: dict[Key, set[Member]] = {}
        self._members: dict[int, Member] = {}  # by the id of their subscribe, while subscribed
        self._waiting: dict[int, _Waiting] = {}
        self._ids = itertools.count(1)
        self._outgoing: asyncio.Queue[Any] | None = None
        self._reader: asyncio.Future[None] | None = None
        self._request_id = ""  # the open stream's, as logged and quoted in an internal error

    def text(self, frame: Any) -> str:
        return orjson.dumps(self._encode(frame)).decode()

    async def subscribe(
        self, sub: Member, principal: Principal, offset: int | None, epoch: str
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
        outgoing.put_nowait(protocol.relay_join(tenant, topic, request_id, principal, offset, epoch))
        try:
            return await waiting.answer, waiting.replay
        finally:
            self._waiting.pop(request_id, None)

    def detach(self, sub: Member) -> None:
        """The socket left the channel: the service forgets it (and stops following the channel when it was
        the edge's last socket there)."""
        if not self._forget(sub):
            return  # already gone (revoked, or with a broken relay)
        if self._outgoing is not None:
            tenant, topic = sub.key
            self._outgoing.put_nowait(protocol.relay_leave(tenant, topic, sub.id))

    def _forget(self, sub: Member) -> bool:
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
        self._request_id = f"relay-{uuid.uuid4().hex}"
        metadata = (("x-request-id", self._request_id), (internal.METADATA_KEY, self._secret))
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
        except Exception as exc:
            error = api_error(exc, self._request_id, self._service, "the realtime relay")
            failure = DescribedError(error)
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
        offset = frame.offset
        for sub in subs:  # neither awaits nor changes the set
            if not frame.synthetic:
                sub.deliver(offset, text)
            elif sub.live:  # a heartbeat is only for live subscriptions and carries no new offset
                sub.emit(text)
        FANNED_OUT.inc(len(subs))

    def _answer(self, request_id: int, frame: Any) -> None:
        waiting = self._waiting.get(request_id)
        if waiting is None or waiting.answer.done():
            member = self._members.get(request_id)
            if member is not None and frame.type == "error":
                self._revoked(member, frame)
            return
        if frame.type == "message":
            waiting.replay.append((frame.offset, self.text(frame)))
        elif frame.type == "error":
            waiting.answer.set_exception(protocol.failure_of(frame))
        else:
            waiting.answer.set_result(frame)

    def _revoked(self, sub: Member, frame: Any) -> None:
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


class _Socket(protocol.Client[Member]):
    """One accepted socket: its subscriptions go through the process's relay, its publishes to the service."""

    def __init__(
        self, app: FanoutSocket, session: Session, principal: Principal, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        super().__init__()
        self.app, self.session, self.principal, self.metadata = app, session, principal, metadata
        self.outbox = Outbox(on_overflow=SLOW_DISCONNECTS.inc, flush=True)

    def send(self, frame: Any) -> None:
        self.outbox.offer(self.app.relay.text(frame))

    async def join(self, topic: str, offset: int | None, epoch: str) -> None:
        relay = self.app.relay
        sub = self.subscriptions[topic] = Member(
            self.outbox, (self.principal.tenant, topic), self.subscriptions
        )
        try:
            answer, replay = await relay.subscribe(sub, self.principal, offset, epoch)
        except ServiceError:
            del self.subscriptions[topic]
            relay.detach(sub)
            raise
        sub.last = protocol.start_after(offset, epoch, answer.epoch, answer.offset)
        self.go_live(topic, sub, answer, replay)

    def leave(self, sub: Member) -> None:
        self.app.relay.detach(sub)

    async def publish(self, request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        return await self.app.publish(request, self.metadata)


class FanoutSocket:
    """The ASGI app of a WebSocket route whose contract names a relay."""

    def __init__(self, spec: WebSocketSpec, ctx: EdgeContext, secret: str) -> None:
        service = spec.method.containing_service
        self.spec, self.ctx = spec, ctx
        self.relay = Relay(ctx, spec.service, _named(service, spec.policy.websocket_relay, "relay"), secret)
        self._publish_method = publish = _named(service, spec.policy.websocket_publish, "publish")
        self._publish_timeout_s = method_policy(publish).timeout_ms / 1000
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
            await session.fail_with(api_error(exc, request_id))
            return
        await ws.accept()
        metadata = call_metadata(request_id, principal, token, client_ip(scope))
        sock = _Socket(self, session, principal, metadata)
        gauge = OPEN_SOCKETS.labels(self.spec.path)
        gauge.inc()
        try:
            await self._serve(sock, send, request_id)
        finally:
            gauge.dec()
            for sub in sock.subscriptions.values():
                self.relay.detach(sub)

    async def _serve(self, sock: _Socket, send: Send, request_id: str) -> None:
        expiry = _expire_at(sock)
        writer = asyncio.ensure_future(_write(sock.outbox, send))
        reader = asyncio.ensure_future(_read(sock))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if expiry is not None:
                expiry.cancel()
            for task in (writer, reader):
                task.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
        failure = writer.exception() if writer.done() and not writer.cancelled() else None
        if isinstance(failure, ServiceError):  # the outbox failed: slow socket, expired token, broken relay
            await sock.session.fail_with(api_error(failure, request_id))
        elif reader.done() and not reader.cancelled() and reader.exception() is not None:
            exc = reader.exception()
            if not isinstance(exc, Disconnected):
                await sock.session.fail_with(api_error(exc, request_id, where="a realtime socket"))
        else:
            await sock.session.close(close_code(Code.CANCELLED))

    async def publish(self, request: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        """A socket's publish frame: the contract's unary publish RPC, with the socket's own credentials."""
        try:
            stub = self.ctx.multicallable(self.spec.service, self._publish_method)
            return await stub(request, metadata=metadata, timeout=self._publish_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise BackendCallFailed(exc, self.spec.service) from None


def _named(service: ServiceDescriptor, name: str, option: str) -> MethodDescriptor:
    """The RPC the WebSocket option names (a contract without it cannot be relayed)."""
    method = service.methods_by_name.get(name)
    if method is None:
        raise ValueError(f"{service.full_name}: the websocket option's {option} names no RPC ({name!r})")
    return method


async def _read(sock: _Socket) -> None:
    """Answers the socket's frames in order, until it goes away."""
    while True:
        try:
            request = await sock.session.next_request()
        except Exception as exc:
            raise Disconnected from exc  # the client went away
        await sock.handle(request)


async def _write(outbox: Outbox, send: Send) -> None:
    """Writes the socket's frames as they come, until its outbox raises the failure that ends the socket
    (after what was queued before it)."""
    while (text := await outbox.next()) is not None:
        await send({"type": "websocket.send", "text": text})


def _expire_at(sock: _Socket) -> asyncio.TimerHandle | None:
    """Closes the socket 1008 when its token expires."""
    if not sock.principal.expires_at:
        return None
    delay = max(sock.principal.expires_at - time.time(), 0.0)
    expired = Unauthenticated("token expired: reconnect with a fresh token")
    return asyncio.get_running_loop().call_later(delay, sock.outbox.fail, expired)
