"""The realtime wire protocol (protos/launchpad/realtime/v1), written once for both ends that speak it: the
service's Connect streams (servicer.py, hub.py) and the edge's relayed sockets (edge/fanout.py).

- Frames: what the server sends (message, subscribed, unsubscribed, published, pong, error) and the relay's
  requests and responses.
- A client frame is read by `parse` and answered by `Client.handle`: exactly one of subscribe (or `topic`, a
  synonym) with an optional offset+epoch to recover, unsubscribe, publish, ping. A refused frame gets an error
  frame naming its topic and the stream goes on. At most MAX_TOPICS subscriptions per client.
- A `Subscription` delivers each offset once, in order: live messages that arrive while the history is read
  wait, then the replay goes out, then them.
- Backpressure (`Outbox`): every client has a bounded outbox (QUEUE_LIMIT frames) and fan-out never waits for
  a client. A frame that finds it full makes that client the slow one: its queued frames are dropped and the
  stream ends with RESOURCE_EXHAUSTED (the edge closes that socket 1013). Other clients are never slowed.

The edge imports this module: it imports no backend (Redis, Kafka), no hub and no servicer.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from launchpad.realtime.v1 import realtime_pb2
from services.core.context import Principal
from services.core.errors import Code, InvalidArgument, ResourceExhausted, ServiceError

QUEUE_LIMIT = 256  # frames waiting for one client
MAX_TOPICS = 100  # subscriptions per client
MAX_MESSAGE_BYTES = 64 * 1024  # one published message, serialized
RELAY_QUEUE_LIMIT = 16_384  # frames an edge's relay may fall behind (the edge reads as fast as it can)

EMPTY_FRAME = "empty frame: set subscribe, topic, unsubscribe, publish or ping"

Frame = realtime_pb2.ConnectResponse
T = TypeVar("T")

# ------------------------------------------------------------------------------------------------- frames


def timestamp(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def now_ms() -> int:
    return int(time.time() * 1000)


class Stored(Protocol):
    """A message as a backend keeps it (backends.Entry)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def payload(self) -> bytes: ...  # a serialized google.protobuf.Value


def message_frame(topic: str, epoch: str, entry: Stored) -> Frame:
    message = struct_pb2.Value()
    message.ParseFromString(entry.payload)
    return Frame(
        type="message",
        topic=topic,
        message=message,
        offset=entry.offset,
        epoch=epoch,
        timestamp=timestamp(entry.timestamp_ms),
    )


def heartbeat_frame(topic: str, epoch: str, offset: int, body: struct_pb2.Value, stamp: Timestamp) -> Frame:
    """A generated message (synthetic): it carries the subscription's last offset, never a new one."""
    return Frame(
        type="message", topic=topic, message=body, offset=offset, epoch=epoch, timestamp=stamp, synthetic=True
    )


def subscribed(topic: str, offset: int, epoch: str, recovered: bool) -> Frame:
    return Frame(type="subscribed", topic=topic, offset=offset, epoch=epoch, recovered=recovered)


def unsubscribed(topic: str) -> Frame:
    return Frame(type="unsubscribed", topic=topic)


def published(done: realtime_pb2.PublishResponse) -> Frame:
    return Frame(
        type="published", topic=done.topic, offset=done.offset, epoch=done.epoch, timestamp=done.timestamp
    )


def pong() -> Frame:
    frame = Frame(type="pong")
    frame.timestamp.GetCurrentTime()
    return frame


def error_frame(exc: ServiceError, topic: str = "") -> Frame:
    """A refusal as the protocol's error frame: code name, message and the topic it concerns. The contract's
    FrameError has no details field, so `exc.details` (and a described edge error's) do not go out here."""
    return Frame(
        type="error", topic=topic, error=realtime_pb2.FrameError(code=exc.code.name, message=exc.message)
    )


def failure_of(frame: Frame) -> ServiceError:
    """The refusal an error frame carries (the inverse of error_frame)."""
    return ServiceError(frame.error.message, code=Code.__members__.get(frame.error.code, Code.INTERNAL))


def relay_join(
    tenant: str, topic: str, key: int, principal: Principal, offset: int | None, epoch: str
) -> realtime_pb2.RelayRequest:
    """One socket's subscribe on an edge's relay, decided by the service for the socket's principal."""
    request = realtime_pb2.RelayRequest(
        tenant=tenant,
        topic=topic,
        id=key,
        epoch=epoch,
        subject=principal.subject,
        roles=list(principal.roles),
    )
    if offset is not None:
        request.offset = offset
    return request


def relay_leave(tenant: str, topic: str, key: int) -> realtime_pb2.RelayRequest:
    """Socket `key` left the channel (key 0: the edge leaves the whole channel)."""
    return realtime_pb2.RelayRequest(tenant=tenant, topic=topic, id=key, unsubscribe=True)


def relayed(tenant: str, frame: Frame, key: int = 0) -> realtime_pb2.RelayResponse:
    """A channel's message (key 0), or the answer to socket `key`'s subscribe."""
    return realtime_pb2.RelayResponse(tenant=tenant, id=key, frame=frame)


# ------------------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    offset: int | None  # the last offset the client saw: missed messages after it are replayed
    epoch: str  # the stream epoch that offset belongs to


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    request: realtime_pb2.PublishRequest


@dataclass(frozen=True, slots=True)
class Ping:
    pass


Command = Subscribe | Unsubscribe | Publish | Ping


def parse(request: realtime_pb2.ConnectRequest) -> Command:
    """What a client frame asks for; InvalidArgument when it asks for nothing."""
    if request.ping:
        return Ping()
    topic = request.subscribe or request.topic
    if topic:
        return Subscribe(topic, request.offset if request.HasField("offset") else None, request.epoch)
    if request.unsubscribe:
        return Unsubscribe(request.unsubscribe)
    if request.HasField("publish"):
        return Publish(request.publish)
    raise InvalidArgument(EMPTY_FRAME)


def named_topic(request: realtime_pb2.ConnectRequest) -> str:
    """The topic an error frame for this client frame names."""
    return request.subscribe or request.topic or request.unsubscribe


def recovers(offset: int | None, epoch: str, current: str) -> bool:
    """A subscribe's offset reads the history when it belongs to the channel's current epoch (or names none)."""
    return offset is not None and (not epoch or epoch == current)


def start_after(offset: int | None, epoch: str, current: str, top: int) -> int:
    """The offset a subscription's delivery starts after: the client's, else the channel's top. An offset from
    the future (another epoch in all but name) starts from now."""
    return min(offset, top) if offset is not None and recovers(offset, epoch, current) else top


# ----------------------------------------------------------------------------------------- backpressure


class Outbox(Generic[T]):
    """One stream's frames, in order and bounded: fan-out only appends (`offer`), one consumer takes them
    (`next`), and `failure` is why the stream must end, if it must.

    `flush`: frames queued before a failure still go out before it (a socket gets what came before its
    token expired); else the failure cuts them off. `on_overflow` runs when the outbox overflows (metrics,
    unsubscribing its client at once)."""

    def __init__(
        self, limit: int | None = None, on_overflow: Callable[[], None] | None = None, *, flush: bool = False
    ) -> None:
        self.frames: deque[T] = deque()
        self.limit = QUEUE_LIMIT if limit is None else limit
        self.failure: BaseException | None = None
        self.ended = False
        self._flush = flush
        self._on_overflow = on_overflow
        self._wakeup = asyncio.Event()

    def offer(self, frame: T) -> None:
        if self.failure is not None or self.ended:
            return
        if len(self.frames) >= self.limit:
            self.frames.clear()
            self.fail(ResourceExhausted(f"slow client: more than {self.limit} frames waiting; reconnect"))
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self.frames.append(frame)
        self._wakeup.set()

    def fail(self, failure: BaseException) -> None:
        if self.failure is None:
            self.failure = failure
        self._wakeup.set()

    def end(self) -> None:
        """The stream ends normally once the queued frames went out."""
        self.ended = True
        self._wakeup.set()

    async def next(self, timeout: float | None = None) -> T | None:
        """The next frame; None when the stream ended normally; raises the failure; TimeoutError on timeout."""
        while True:
            if self.frames and (self.failure is None or self._flush):
                return self.frames.popleft()
            if self.failure is not None:
                raise self.failure
            if self.ended:
                return None
            self._wakeup.clear()
            await asyncio.wait_for(self._wakeup.wait(), timeout)


# ---------------------------------------------------------------------------------------- subscriptions


class Subscription(Generic[T]):
    """One client on one channel: delivers each offset once, in order (`emit` sends one item). Live items
    wait in `pending` until `start`, which delivers the replay, then them, and goes live."""

    def __init__(self) -> None:
        self.last = 0  # the offset delivered last (replay and live overlap: what is not after it is a repeat)
        self.pending: list[tuple[int, T]] | None = []

    @property
    def live(self) -> bool:
        """Started: generated messages (heartbeats) are only for live subscriptions."""
        return self.pending is None

    def deliver(self, offset: int, item: T) -> None:
        if self.pending is not None:
            self.pending.append((offset, item))
            return
        if offset <= self.last:
            return  # already delivered
        self.last = offset
        self.emit(item)

    def start(self, replay: Iterable[tuple[int, T]]) -> None:
        pending, self.pending = self.pending or [], None
        for offset, item in [*replay, *pending]:
            self.deliver(offset, item)

    def emit(self, item: T) -> None:
        raise NotImplementedError


S = TypeVar("S", bound=Subscription[Any])


class Client(ABC, Generic[S]):
    """One client's side of Connect: answers its frames and keeps its subscriptions by topic. Subclasses say
    how a frame goes out (`send`) and how a topic is checked, joined, left and published to."""

    def __init__(self, subscriptions: dict[str, S] | None = None) -> None:
        self.subscriptions: dict[str, S] = {} if subscriptions is None else subscriptions

    async def handle(self, request: realtime_pb2.ConnectRequest) -> None:
        """Answers one client frame; a refused one gets an error frame naming its topic (the stream goes on)."""
        try:
            await self._answer(parse(request))
        except ServiceError as exc:
            self.send(error_frame(exc, named_topic(request)))

    async def _answer(self, command: Command) -> None:
        if isinstance(command, Ping):
            self.send(pong())
        elif isinstance(command, Subscribe):
            topic = self.checked(command.topic)
            self._make_room(topic)
            await self.join(topic, command.offset, command.epoch)
        elif isinstance(command, Unsubscribe):
            sub = self.subscriptions.pop(command.topic, None)
            if sub is not None:
                self.leave(sub)
            self.send(unsubscribed(command.topic))
        else:
            self.send(published(await self.publish(command.request)))

    def _make_room(self, topic: str) -> None:
        """A subscribe replaces the client's subscription to that topic; a new topic needs a free slot."""
        old = self.subscriptions.pop(topic, None)
        if old is not None:
            self.leave(old)
        elif len(self.subscriptions) >= MAX_TOPICS:
            raise ResourceExhausted(f"at most {MAX_TOPICS} topics per connection")

    def go_live(self, topic: str, sub: S, answer: Frame, replay: Iterable[tuple[int, Any]]) -> None:
        """Sends the "subscribed" answer, the replay and what arrived meanwhile; nothing when the subscription
        ended while it was set up (unsubscribed, dropped, or revoked: that error frame went out instead)."""
        if self.subscriptions.get(topic) is not sub:
            return
        self.send(answer)
        sub.start(replay)

    def checked(self, topic: str) -> str:
        """The topic to subscribe (InvalidArgument when it is not one); the service checks it."""
        return topic

    @abstractmethod
    def send(self, frame: Frame) -> None: ...

    @abstractmethod
    async def join(self, topic: str, offset: int | None, epoch: str) -> None:
        """Subscribes `topic` (there is room): the subscription in `subscriptions`, then `go_live`."""

    @abstractmethod
    def leave(self, sub: S) -> None: ...

    @abstractmethod
    async def publish(self, request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse: ...
