"""The realtime wire protocol on its own (services/realtime/protocol.py): parsing, answers, subscriptions and
the outbox's backpressure rule, without a server, a backend or the edge."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from launchpad.realtime.v1 import realtime_pb2
from services.core.context import Principal
from services.core.errors import Code, InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from services.realtime import protocol

Request = realtime_pb2.ConnectRequest


def test_parse_reads_each_kind_of_client_frame() -> None:
    assert protocol.parse(Request(ping=True)) == protocol.Ping()
    assert protocol.parse(Request(subscribe="a")) == protocol.Subscribe("a", None, "")
    assert protocol.parse(Request(topic="a", offset=0, epoch="e")) == protocol.Subscribe("a", 0, "e")
    assert protocol.parse(Request(unsubscribe="a")) == protocol.Unsubscribe("a")
    publish = realtime_pb2.PublishRequest(topic="a")
    assert protocol.parse(Request(publish=publish)) == protocol.Publish(publish)


def test_an_empty_frame_is_invalid_and_names_what_to_set() -> None:
    with pytest.raises(InvalidArgument) as refused:
        protocol.parse(Request())
    assert refused.value.message == "empty frame: set subscribe, topic, unsubscribe, publish or ping"


def test_error_frames_name_the_topic_and_round_trip_the_code() -> None:
    assert protocol.named_topic(Request(topic="t")) == "t"
    assert protocol.named_topic(Request(unsubscribe="u")) == "u"
    frame = protocol.error_frame(PermissionDenied("no"), "t")
    assert (frame.type, frame.topic, frame.error.code, frame.error.message) == (
        "error",
        "t",
        "PERMISSION_DENIED",
        "no",
    )
    back = protocol.failure_of(frame)
    assert back.code is Code.PERMISSION_DENIED and back.message == "no"
    frame.error.code = "NOT_A_CODE"
    assert protocol.failure_of(frame).code is Code.INTERNAL


def test_recovery_needs_an_offset_of_the_current_epoch_and_never_starts_in_the_future() -> None:
    assert not protocol.recovers(None, "", "e1")
    assert protocol.recovers(3, "", "e1") and protocol.recovers(3, "e1", "e1")
    assert not protocol.recovers(3, "e0", "e1")
    assert protocol.start_after(3, "e1", "e1", top=9) == 3
    assert protocol.start_after(12, "e1", "e1", top=9) == 9  # an offset from the future starts from now
    assert protocol.start_after(3, "e0", "e1", top=9) == 9
    assert protocol.start_after(None, "", "e1", top=9) == 9


def test_relay_requests_carry_the_sockets_principal_and_offset() -> None:
    who = Principal(subject="ann", tenant="acme", roles=("viewer",))
    join = protocol.relay_join("acme", "t", 7, who, None, "")
    assert (join.subject, list(join.roles), join.id) == ("ann", ["viewer"], 7) and not join.HasField("offset")
    assert protocol.relay_join("acme", "t", 7, who, 0, "e").offset == 0
    assert protocol.relay_leave("acme", "t", 7).unsubscribe


# ------------------------------------------------------------------------------------------------ outbox


async def test_a_full_outbox_drops_its_frames_and_fails_resource_exhausted() -> None:
    overflowed: list[bool] = []
    outbox: protocol.Outbox[int] = protocol.Outbox(limit=3, on_overflow=lambda: overflowed.append(True))
    for frame in range(3):
        outbox.offer(frame)
    assert list(outbox.frames) == [0, 1, 2] and not overflowed
    outbox.offer(3)  # the fourth finds it full: this client is the slow one
    assert not outbox.frames and overflowed == [True]
    assert isinstance(outbox.failure, ResourceExhausted)
    assert outbox.failure.message == "slow client: more than 3 frames waiting; reconnect"
    outbox.offer(4)  # ignored from now on
    assert not outbox.frames and overflowed == [True]
    with pytest.raises(ResourceExhausted):
        await outbox.next()


def test_the_default_limit_is_the_protocols() -> None:
    assert protocol.Outbox().limit == protocol.QUEUE_LIMIT == 256


async def test_a_failure_cuts_the_queue_unless_the_outbox_flushes() -> None:
    for flush, expected in ((False, []), (True, ["a", "b"])):
        outbox: protocol.Outbox[str] = protocol.Outbox(flush=flush)
        outbox.offer("a")
        outbox.offer("b")
        outbox.fail(Unauthenticated("token expired"))
        got = []
        with pytest.raises(Unauthenticated):
            while True:
                got.append(await outbox.next())
        assert got == expected


async def test_next_waits_for_a_frame_and_returns_none_once_ended() -> None:
    outbox: protocol.Outbox[str] = protocol.Outbox()
    waiting = asyncio.ensure_future(outbox.next())
    await asyncio.sleep(0)
    outbox.offer("a")
    assert await waiting == "a"
    with pytest.raises(TimeoutError):
        await outbox.next(0.01)
    outbox.offer("b")
    outbox.end()
    outbox.offer("c")  # after the end: ignored
    assert [await outbox.next(), await outbox.next()] == ["b", None]


# ---------------------------------------------------------------------------------------- subscriptions


class Recorder(protocol.Subscription[str]):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def emit(self, item: str) -> None:
        self.sent.append(item)


def test_replay_then_live_delivers_each_offset_once_in_order() -> None:
    sub = Recorder()
    sub.last = 1
    sub.deliver(3, "live-3")  # arrives while the history is read: waits
    sub.deliver(4, "live-4")
    assert not sub.live and sub.sent == []
    sub.start([(1, "old-1"), (2, "replay-2"), (3, "replay-3")])
    assert sub.live and sub.sent == ["replay-2", "replay-3", "live-4"]
    sub.deliver(4, "again-4")
    sub.deliver(5, "live-5")
    assert sub.sent[-1] == "live-5" and "again-4" not in sub.sent


# --------------------------------------------------------------------------------------------- clients


class FakeClient(protocol.Client[Recorder]):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Any] = []
        self.left: list[Recorder] = []

    def send(self, frame: Any) -> None:
        self.frames.append(frame)

    def checked(self, topic: str) -> str:
        if topic == "bad topic":
            raise InvalidArgument("topic is not valid")
        return topic

    async def join(self, topic: str, offset: int | None, epoch: str) -> None:
        sub = self.subscriptions[topic] = Recorder()
        self.go_live(topic, sub, protocol.subscribed(topic, 5, "e", False), [(5, "m5")])

    def leave(self, sub: Recorder) -> None:
        self.left.append(sub)

    async def publish(self, request: realtime_pb2.PublishRequest) -> realtime_pb2.PublishResponse:
        return realtime_pb2.PublishResponse(topic=request.topic, offset=9, epoch="e")


async def test_client_answers_each_frame_and_refusals_are_error_frames() -> None:
    client = FakeClient()
    await client.handle(Request(ping=True))
    await client.handle(Request(subscribe="a"))
    await client.handle(Request(publish=realtime_pb2.PublishRequest(topic="a")))
    await client.handle(Request())
    await client.handle(Request(subscribe="bad topic"))
    await client.handle(Request(unsubscribe="a"))
    kinds = [(f.type, f.topic, f.error.code) for f in client.frames]
    assert kinds == [
        ("pong", "", ""),
        ("subscribed", "a", ""),
        ("published", "a", ""),
        ("error", "", "INVALID_ARGUMENT"),
        ("error", "bad topic", "INVALID_ARGUMENT"),
        ("unsubscribed", "a", ""),
    ]
    assert client.frames[0].HasField("timestamp") and client.frames[2].offset == 9
    assert client.subscriptions == {} and len(client.left) == 1
    assert client.left[0].sent == ["m5"]


async def test_resubscribing_replaces_and_a_new_topic_needs_a_free_slot() -> None:
    client = FakeClient()
    for n in range(protocol.MAX_TOPICS):
        await client.handle(Request(subscribe=f"t{n}"))
    first = client.subscriptions["t0"]
    await client.handle(Request(subscribe="t0"))  # the same topic again: replaced, no slot needed
    assert client.left == [first] and client.subscriptions["t0"] is not first
    await client.handle(Request(subscribe="one-too-many"))
    error = client.frames[-1]
    assert (error.type, error.topic, error.error.code) == ("error", "one-too-many", "RESOURCE_EXHAUSTED")
    assert error.error.message == f"at most {protocol.MAX_TOPICS} topics per connection"
    assert len(client.subscriptions) == protocol.MAX_TOPICS


def test_importing_the_protocol_pulls_in_no_backend_hub_or_servicer() -> None:
    """The edge imports it: it must stay light."""
    code = (
        "import sys, services.realtime.protocol\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('redis', 'kafka', 'grpc')\n"
        "         or m.startswith('services.realtime.') and m != 'services.realtime.protocol']\n"
        "print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # pytest's pythonpath setting, too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
