"""RealtimeService over a real grpc.aio server (port 0), embedded broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.realtime import hub as hub_module
from services.realtime import protocol
from services.realtime.app import build
from tests.support import make_token, metadata, running_service

Req = realtime_pb2.ConnectRequest


def value(**fields: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    v.struct_value.update(fields)
    return v


class Client:
    """One Connect stream: send frames, read frames with a timeout."""

    def __init__(self, stub: Any, token: str) -> None:
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.call = stub.Connect(self._frames(), metadata=metadata(token))

    async def _frames(self) -> AsyncIterator[Any]:
        while (item := await self.requests.get()) is not None:
            yield item

    async def send(self, **fields: Any) -> None:
        await self.requests.put(Req(**fields))

    async def read(self, timeout: float = 5.0) -> realtime_pb2.ConnectResponse:
        return await asyncio.wait_for(self.call.read(), timeout)

    async def until(self, kind: str, *, real: bool = True, timeout: float = 5.0) -> Any:
        while True:
            frame = await self.read(timeout)
            if frame.type == kind and not (real and frame.synthetic):
                return frame


@pytest.fixture
async def stub(settings_env: Path) -> AsyncIterator[Any]:
    async with running_service("realtime", build) as (_, channel):
        yield realtime_pb2_grpc.RealtimeServiceStub(channel)


async def test_subscribe_then_a_synthetic_heartbeat(stub: Any) -> None:
    c = Client(stub, make_token())
    await c.send(subscribe="naksha.telemetry")
    subscribed = await c.read()
    assert subscribed.type == "subscribed" and subscribed.topic == "naksha.telemetry" and subscribed.epoch
    beat = await c.read(timeout=4)
    assert beat.type == "message" and beat.synthetic is True
    assert beat.message.struct_value["kind"] == "heartbeat"
    assert beat.message.struct_value["connections"] >= 1
    c.call.cancel()


async def test_no_heartbeat_while_real_messages_flow(stub: Any) -> None:
    c = Client(stub, make_token())
    await c.send(topic="naksha.telemetry")  # `topic` is a synonym of subscribe
    assert (await c.read()).type == "subscribed"
    for i in range(12):  # 3 s of real traffic, one message every 0.25 s
        await stub.Publish(realtime_pb2.PublishRequest(topic="naksha.telemetry", msg=value(i=i)),
                           metadata=metadata(make_token()))  # fmt: skip
        await asyncio.sleep(0.25)
    frames = []
    while len(frames) < 12:
        frames.append(await c.read())
    assert [f.synthetic for f in frames] == [False] * 12
    assert [f.offset for f in frames] == list(range(1, 13))
    c.call.cancel()


async def test_publish_from_one_client_receive_on_another(stub: Any) -> None:
    sub, pub = Client(stub, make_token("bob")), Client(stub, make_token("alice"))
    await sub.send(subscribe="orders")
    assert (await sub.read()).type == "subscribed"
    await pub.send(publish=realtime_pb2.PublishRequest(topic="orders", msg=value(id=7)))
    published = await pub.until("published")
    assert published.offset == 1 and published.epoch
    got = await sub.until("message")
    assert got.topic == "orders" and got.message.struct_value["id"] == 7 and got.offset == 1
    assert got.epoch == published.epoch and not got.synthetic and got.timestamp.seconds > 0
    sub.call.cancel()
    pub.call.cancel()


async def test_tenants_never_see_each_others_messages(stub: Any) -> None:
    a, b = Client(stub, make_token("a", tenant="acme")), Client(stub, make_token("b", tenant="globex"))
    for c in (a, b):
        await c.send(subscribe="news")
        assert (await c.read()).type == "subscribed"
    await stub.Publish(realtime_pb2.PublishRequest(topic="news", msg=value(secret="globex-only")),
                       metadata=metadata(make_token("b", tenant="globex")))  # fmt: skip
    await stub.Publish(realtime_pb2.PublishRequest(topic="news", msg=value(hello="acme")),
                       metadata=metadata(make_token("a", tenant="acme")))  # fmt: skip
    assert (await b.until("message")).message.struct_value["secret"] == "globex-only"
    first = await a.until("message")
    assert first.message.struct_value["hello"] == "acme" and first.offset == 1  # own sequence per tenant
    with pytest.raises(TimeoutError):
        await a.until("message", timeout=0.5)
    a.call.cancel()
    b.call.cancel()


async def test_reconnect_with_offset_recovers_missed_messages(stub: Any) -> None:
    token = make_token()
    for i in range(1, 6):
        answer = await stub.Publish(realtime_pb2.PublishRequest(topic="feed", msg=value(n=i)),
                                    metadata=metadata(token))  # fmt: skip
        assert answer.offset == i
    c = Client(stub, token)
    await c.send(subscribe="feed")
    epoch = (await c.read()).epoch
    c.call.cancel()
    again = Client(stub, token)
    await again.send(subscribe="feed", offset=2, epoch=epoch)
    subscribed = await again.read()
    assert subscribed.type == "subscribed" and subscribed.recovered is True and subscribed.offset == 5
    assert [(await again.until("message")).offset for _ in range(3)] == [3, 4, 5]
    other = Client(stub, token)  # an offset from another epoch cannot be trusted
    await other.send(subscribe="feed", offset=2, epoch="not-this-one")
    assert (await other.read()).recovered is False
    again.call.cancel()
    other.call.cancel()


async def test_an_offset_from_the_future_starts_from_now(stub: Any) -> None:
    token = make_token()
    c = Client(stub, token)
    await c.send(subscribe="future", offset=10**9)
    assert (await c.read()).recovered is False
    await stub.Publish(realtime_pb2.PublishRequest(topic="future", msg=value(n=1)), metadata=metadata(token))
    assert (await c.until("message")).offset == 1  # not held back until offset 10**9
    c.call.cancel()


async def test_recovery_beyond_the_bounded_history_says_not_recovered(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_REALTIME_HISTORY", "3")
    async with running_service("realtime", build) as (_, channel):
        stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
        token = make_token()
        for i in range(1, 8):
            await stub.Publish(
                realtime_pb2.PublishRequest(topic="feed", msg=value(n=i)), metadata=metadata(token)
            )
        c = Client(stub, token)
        await c.send(subscribe="feed", offset=1)
        subscribed = await c.read()
        assert subscribed.recovered is False
        assert [(await c.until("message")).offset for _ in range(3)] == [
            5,
            6,
            7,
        ]  # what the history still has
        c.call.cancel()


async def test_a_slow_client_is_disconnected_and_others_are_not(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "QUEUE_LIMIT", 16)
    before = hub_module.SLOW_DISCONNECTS._value.get()
    slow, fast = Client(stub, make_token("slow")), Client(stub, make_token("fast"))
    for c in (slow, fast):
        await c.send(subscribe="firehose")
        assert (await c.read()).type == "subscribed"
    received = 0

    async def drain() -> None:
        nonlocal received
        while True:
            if (await fast.read()).type == "message":
                received += 1

    reader = asyncio.create_task(drain())
    token, blob = make_token(), "x" * 8000  # large frames fill the transport's windows quickly
    sent = 0
    while hub_module.SLOW_DISCONNECTS._value.get() == before and sent < 3000:
        sent += 1
        await stub.Publish(realtime_pb2.PublishRequest(topic="firehose", msg=value(blob=blob)),
                           metadata=metadata(token))  # fmt: skip
    assert hub_module.SLOW_DISCONNECTS._value.get() == before + 1
    for _ in range(100):
        if received == sent:
            break
        await asyncio.sleep(0.05)
    assert received == sent  # the fast client got every message
    reader.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        while True:
            await slow.read()  # the frames already in flight, then the status
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    fast.call.cancel()


async def test_viewers_cannot_publish(stub: Any) -> None:
    viewer = make_token("vic", roles=("viewer",))
    c = Client(stub, viewer)
    await c.send(publish=realtime_pb2.PublishRequest(topic="orders", msg=value(x=1)))
    error = await c.read()
    assert error.type == "error" and error.error.code == "PERMISSION_DENIED"
    await c.send(ping=True)
    assert (await c.read()).type == "pong"  # the stream goes on
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Publish(
            realtime_pb2.PublishRequest(topic="orders", msg=value(x=1)), metadata=metadata(viewer)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    c.call.cancel()


async def test_bad_topic_is_an_error_frame(stub: Any) -> None:
    c = Client(stub, make_token())
    await c.send(subscribe="no spaces/allowed")
    error = await c.read()
    assert error.type == "error" and error.error.code == "INVALID_ARGUMENT"
    c.call.cancel()


async def test_the_stream_ends_when_the_token_expires(stub: Any) -> None:
    c = Client(stub, make_token(ttl=2))
    await c.send(subscribe="orders")
    assert (await c.read()).type == "subscribed"
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await c.until("message", timeout=5)
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (ended.value.details() or "")
