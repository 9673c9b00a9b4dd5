"""The in-process channel against a real grpc.aio channel to the same server, side by side: same statuses,
messages, metadata, audit and metrics; plus deadlines, cancellation, backpressure and message isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from prometheus_client import REGISTRY

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.errors import InvalidArgument
from services.core.inproc import REGISTRY as SERVERS
from services.core.inproc import InProcessChannel, InProcessServer
from services.core.interceptors import DETAILS_KEY
from services.core.server import Runtime, ServiceSpec
from tests.support import make_token, metadata, running_service

TOKEN = make_token(tenant="acme")
WINDOW = 4


class Seen:
    """What the test servicers observed, for the test to check."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled: list[bool] = []
        self.remaining: list[float | None] = []
        self.requests: list[Any] = []
        self.produced = 0


SEEN = Seen()


class Data(data_pb2_grpc.DataServiceServicer):
    async def Query(self, request, context):
        SEEN.requests.append(request)
        sql = request.sql
        if sql == "bad":
            raise InvalidArgument("syntax error at or near 'bad'", position=1)
        if sql == "boom":
            raise RuntimeError("secret internal detail")
        if sql == "sleep":
            SEEN.remaining.append(context.time_remaining())
            SEEN.started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                SEEN.cancelled.append(context.cancelled())
                raise
        if sql == "metadata":
            echo = dict(context.invocation_metadata())
            await context.send_initial_metadata((("x-echo", echo["x-echo"]),))
            context.set_trailing_metadata((("x-trailer", "t"), ("x-blob-bin", echo["x-blob-bin"])))
        response = data_pb2.QueryResponse(row_count=len(sql), columns=[data_pb2.Column(name=sql)])
        request.sql = "mutated by the servicer"  # the caller's object must not change
        return response


class Files(storage_pb2_grpc.StorageServiceServicer):
    async def ReadObject(self, request, context):  # server streaming
        count = len(request.signature.bucket)
        for index in range(count):
            SEEN.produced = index + 1
            yield storage_pb2.ReadObjectResponse(data=bytes([index]))
        if request.signature.key == "fail":
            raise InvalidArgument("broken after the chunks", offset=count)

    async def WriteObject(self, request_iterator, context):  # client streaming
        chunks = [chunk.data async for chunk in request_iterator]
        if b"fail" in chunks:
            raise InvalidArgument("refused chunk")
        return storage_pb2.WriteObjectResponse(object=storage_pb2.ObjectInfo(size=sum(map(len, chunks))))


class Echo(realtime_pb2_grpc.RealtimeServiceServicer):
    async def Connect(self, request_iterator, context):  # bidi
        async for frame in request_iterator:
            if frame.topic == "flood":  # produce until the caller stops reading
                for _ in range(10_000):
                    SEEN.produced += 1
                    yield realtime_pb2.ConnectResponse(type="flood")
            if frame.topic == "stall":  # never read again
                await asyncio.sleep(30)
            if frame.topic == "fail":
                raise InvalidArgument("bad frame", topic="fail")
            yield realtime_pb2.ConnectResponse(type="echo", topic=frame.topic)


async def build(runtime: Runtime) -> list[ServiceSpec]:
    def spec(pb2: Any, name: str, servicer: Any, add: Callable[..., None]) -> ServiceSpec:
        return ServiceSpec(pb2.DESCRIPTOR.services_by_name[name], servicer, add)

    return [
        spec(data_pb2, "DataService", Data(), data_pb2_grpc.add_DataServiceServicer_to_server),
        spec(storage_pb2, "StorageService", Files(), storage_pb2_grpc.add_StorageServiceServicer_to_server),
        spec(
            realtime_pb2, "RealtimeService", Echo(), realtime_pb2_grpc.add_RealtimeServiceServicer_to_server
        ),
    ]


@pytest.fixture
async def pair(settings_env: Path) -> AsyncIterator[tuple[Runtime, grpc.aio.Channel, InProcessChannel]]:
    global SEEN
    SEEN = Seen()
    async with running_service("data", build) as (runtime, channel):
        assert runtime.inproc is not None
        async with runtime.inproc.channel(window=WINDOW) as inproc:
            yield runtime, channel, inproc


async def outcome(call: Awaitable[Any]) -> tuple[Any, ...]:
    """What a caller can observe of a finished unary call."""
    try:
        response = await call
    except grpc.aio.AioRpcError as err:
        return ("error", err.code(), err.details(), dict(err.trailing_metadata() or ()))
    return ("ok", response, dict(await call.initial_metadata()), dict(await call.trailing_metadata()))


async def stream_outcome(call: Any) -> tuple[Any, ...]:
    messages = []
    try:
        async for message in call:
            messages.append(message)
    except grpc.aio.AioRpcError as err:
        return (messages, err.code(), err.details(), dict(err.trailing_metadata() or ()))
    return (messages, await call.code(), await call.details(), dict(await call.trailing_metadata()))


@pytest.mark.parametrize("sql", ["x", "bad", "boom", "metadata"])
@pytest.mark.parametrize("who", ["token", "no-token", "no-request-id"])
async def test_unary_outcomes_match_a_real_channel(pair, sql: str, who: str) -> None:
    _, real, inproc = pair
    md = {
        "token": metadata(TOKEN, x_echo="e"),
        "no-token": metadata(None, x_echo="e"),
        "no-request-id": metadata(TOKEN, request_id=None, x_echo="e"),
    }[who] + (("x-blob-bin", b"\x00\xff"),)
    results = [
        await outcome(
            data_pb2_grpc.DataServiceStub(channel).Query(data_pb2.QueryRequest(sql=sql), metadata=md)
        )
        for channel in (real, inproc)
    ]
    assert _comparable(results[0]) == _comparable(results[1])
    if who == "token" and sql == "boom":
        assert results[1][1] is grpc.StatusCode.INTERNAL and "test-req" in results[1][2]
        assert "secret" not in results[1][2]
    if who == "token" and sql == "bad":
        assert orjson.loads(results[1][3][DETAILS_KEY]) == [{"position": 1}]
    if who == "token" and sql == "metadata":
        assert results[1][2]["x-echo"] == "e" and results[1][3]["x-blob-bin"] == b"\x00\xff"


def _comparable(result: tuple[Any, ...]) -> tuple[Any, ...]:
    """Initial metadata minus what only HTTP/2 adds."""
    if result[0] != "ok":
        return result
    return (result[0], result[1], {k: v for k, v in result[2].items() if k.startswith("x-")}, result[3])


async def test_unknown_method_is_unimplemented_on_both(pair) -> None:
    _, real, inproc = pair
    results = []
    for channel in (real, inproc):
        call = channel.unary_unary("/launchpad.data.v1.DataService/Nope")(b"", metadata=metadata(TOKEN))
        results.append(await outcome(call))
    assert results[0] == results[1] and results[1][1] is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("key", ["ok", "fail"])
async def test_server_streaming_matches(pair, key: str) -> None:
    _, real, inproc = pair
    request = storage_pb2.ReadObjectRequest(signature=storage_pb2.UrlSignature(bucket="abc", key=key))
    results = [
        await stream_outcome(storage_pb2_grpc.StorageServiceStub(c).ReadObject(request, metadata=metadata()))
        for c in (real, inproc)
    ]
    assert results[0] == results[1]
    assert [m.data for m in results[1][0]] == [b"\x00", b"\x01", b"\x02"]


@pytest.mark.parametrize("chunks", [[b"a", b"bc"], [b"a", b"fail"], []])
async def test_client_streaming_matches_both_styles(pair, chunks: list[bytes]) -> None:
    _, real, inproc = pair
    results = []
    for channel in (real, inproc):
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        requests = [storage_pb2.WriteObjectRequest(data=c) for c in chunks]
        results.append(await outcome(stub.WriteObject(iter(requests), metadata=metadata())))
        call = stub.WriteObject(metadata=metadata())
        for request in requests:
            await call.write(request)
        await call.done_writing()
        results.append(await outcome(call))
    assert [_comparable(r) for r in results[:2]] == [_comparable(r) for r in results[2:]]
    assert _comparable(results[0]) == _comparable(results[1])


@pytest.mark.parametrize("topics", [["a", "b"], ["a", "fail", "b"]])
async def test_bidi_streaming_matches(pair, topics: list[str]) -> None:
    _, real, inproc = pair
    results = []
    for channel in (real, inproc):
        call = realtime_pb2_grpc.RealtimeServiceStub(channel).Connect(metadata=metadata(TOKEN))
        seen: list[str] = []
        failure: tuple[Any, ...] = ()
        for topic in topics:
            try:
                await call.write(realtime_pb2.ConnectRequest(topic=topic))
                seen.append((await call.read()).topic)
            except grpc.aio.AioRpcError as err:
                failure = (err.code(), err.details(), dict(err.trailing_metadata()))
                break
        if not failure:
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
        results.append((seen, failure, await call.code()))
    assert results[0] == results[1]


@pytest.mark.parametrize("make", ["real", "inproc"])
async def test_deadline_is_honoured_and_seen_by_the_servicer(pair, make: str) -> None:
    runtime, real, inproc = pair
    channel = real if make == "real" else inproc
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await data_pb2_grpc.DataServiceStub(channel).Query(
            data_pb2.QueryRequest(sql="sleep"), metadata=metadata(TOKEN, request_id=f"dl-{make}"), timeout=0.3
        )
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details() == "Deadline Exceeded"
    assert SEEN.remaining[0] is not None and 0 < SEEN.remaining[0] <= 0.3
    await _until(lambda: _audit(runtime, f"dl-{make}") is not None)
    assert _audit(runtime, f"dl-{make}")["code"] == "CANCELLED"


async def test_cancel_reaches_the_servicer(pair) -> None:
    runtime, _, inproc = pair
    call = data_pb2_grpc.DataServiceStub(inproc).Query(
        data_pb2.QueryRequest(sql="sleep"), metadata=metadata(TOKEN, request_id="cancel-1")
    )
    await asyncio.wait_for(SEEN.started.wait(), 5)
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await call.code() is grpc.StatusCode.CANCELLED and call.cancelled()
    await _until(lambda: bool(SEEN.cancelled))
    assert SEEN.cancelled == [True]
    await _until(lambda: _audit(runtime, "cancel-1") is not None)
    assert _audit(runtime, "cancel-1")["code"] == "CANCELLED"


async def test_a_cancelled_caller_task_cancels_the_call(pair) -> None:
    _, _, inproc = pair
    stub = data_pb2_grpc.DataServiceStub(inproc)
    task = asyncio.ensure_future(stub.Query(data_pb2.QueryRequest(sql="sleep"), metadata=metadata(TOKEN)))
    await asyncio.wait_for(SEEN.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: bool(SEEN.cancelled))


async def test_a_request_iterator_that_cancels_its_call_matches(pair) -> None:
    """The edge's upload path: the body iterator cancels the call when the client goes away."""
    _, real, inproc = pair
    for channel in (real, inproc):
        calls: list[Any] = []

        async def requests() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
            yield storage_pb2.WriteObjectRequest(data=b"a")
            await asyncio.sleep(0.05)
            calls[0].cancel()  # noqa: B023 -- the call of this loop's channel
            yield storage_pb2.WriteObjectRequest(data=b"never")

        calls.append(
            storage_pb2_grpc.StorageServiceStub(channel).WriteObject(requests(), metadata=metadata())
        )
        with pytest.raises(asyncio.CancelledError):
            await calls[0]
        assert calls[0].cancelled() and await calls[0].code() is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("make", ["real", "inproc"])
async def test_a_stream_past_its_deadline_fails_the_reader(pair, make: str) -> None:
    _, real, inproc = pair
    call = realtime_pb2_grpc.RealtimeServiceStub(real if make == "real" else inproc).Connect(
        metadata=metadata(TOKEN), timeout=0.2
    )
    await call.write(realtime_pb2.ConnectRequest(topic="a"))
    assert (await call.read()).topic == "a"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises((grpc.aio.AioRpcError, asyncio.InvalidStateError)):
        await call.write(realtime_pb2.ConnectRequest(topic="late"))


async def test_closing_the_channel_cancels_its_calls(pair) -> None:
    runtime, _, _ = pair
    assert runtime.inproc is not None
    channel = runtime.inproc.channel()
    call = data_pb2_grpc.DataServiceStub(channel).Query(
        data_pb2.QueryRequest(sql="sleep"), metadata=metadata(TOKEN)
    )
    await asyncio.wait_for(SEEN.started.wait(), 5)
    await channel.close()
    with pytest.raises(asyncio.CancelledError):
        await call
    with pytest.raises(grpc.aio.UsageError):
        data_pb2_grpc.DataServiceStub(channel).Query(data_pb2.QueryRequest(sql="x"))
    await _until(lambda: bool(SEEN.cancelled))


async def test_a_producer_stalls_while_the_caller_does_not_read(pair) -> None:
    _, _, inproc = pair
    call = realtime_pb2_grpc.RealtimeServiceStub(inproc).Connect(metadata=metadata(TOKEN))
    await call.write(realtime_pb2.ConnectRequest(topic="flood"))
    await asyncio.sleep(0.2)
    stalled = SEEN.produced
    assert 0 < stalled <= WINDOW + 2  # the window, plus one being written and one in the kit's generator
    for _ in range(50):
        assert (await call.read()).type == "flood"
    await asyncio.sleep(0.05)
    assert SEEN.produced <= stalled + 50 + 1
    call.cancel()


async def test_a_caller_stalls_while_the_servicer_does_not_read(pair) -> None:
    _, _, inproc = pair
    call = realtime_pb2_grpc.RealtimeServiceStub(inproc).Connect(metadata=metadata(TOKEN))
    await call.write(realtime_pb2.ConnectRequest(topic="stall"))
    written = 0
    with pytest.raises(TimeoutError):
        for _ in range(100):
            await asyncio.wait_for(call.write(realtime_pb2.ConnectRequest(topic="x")), 0.1)
            written += 1
    assert written == WINDOW
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()


async def test_messages_are_not_shared(pair) -> None:
    _, _, inproc = pair
    request = data_pb2.QueryRequest(sql="x")
    call = data_pb2_grpc.DataServiceStub(inproc).Query(request, metadata=metadata(TOKEN))
    request.sql = "changed after the call"
    response = await call
    assert SEEN.requests[-1] is not request
    assert response.row_count == 1  # the servicer saw "x"
    assert request.sql == "changed after the call"  # the servicer's mutation stayed on its side
    again = await call
    assert again == response and again is not response


async def test_audit_and_metrics_match_a_real_call(pair) -> None:
    runtime, real, inproc = pair
    for name, channel in (("real", real), ("inproc", inproc)):
        stub = data_pb2_grpc.DataServiceStub(channel)
        await stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(TOKEN, request_id=f"a-{name}"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Query(
                data_pb2.QueryRequest(sql="bad"), metadata=metadata(TOKEN, request_id=f"b-{name}")
            )
    for prefix in ("a", "b"):
        real_event, inproc_event = _audit(runtime, f"{prefix}-real"), _audit(runtime, f"{prefix}-inproc")
        assert _event(real_event) == _event(inproc_event)
    before = _count("INVALID_ARGUMENT")
    stub = data_pb2_grpc.DataServiceStub(real)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Query(data_pb2.QueryRequest(sql="bad"), metadata=metadata(TOKEN))
    assert _count("INVALID_ARGUMENT") == before + 1
    with pytest.raises(grpc.aio.AioRpcError):
        await data_pb2_grpc.DataServiceStub(inproc).Query(
            data_pb2.QueryRequest(sql="bad"), metadata=metadata(TOKEN)
        )
    assert _count("INVALID_ARGUMENT") == before + 2


async def test_health_and_status_over_inproc(pair) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _, _, inproc = pair
    reply = await health_pb2_grpc.HealthStub(inproc).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_stopped_server_is_unavailable_and_the_registry_finds_it(pair) -> None:
    runtime, _, _ = pair
    server = runtime.inproc
    assert isinstance(server, InProcessServer)
    SERVERS.register(server, "127.0.0.1:18099")
    try:
        channel = SERVERS.channel("127.0.0.1:18099")
        assert channel is not None and SERVERS.channel("127.0.0.1:1") is None
        stub = data_pb2_grpc.DataServiceStub(channel)
        await server.stop(None)
        result = await outcome(stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(TOKEN)))
        assert result[1] is grpc.StatusCode.UNAVAILABLE
        await server.start()
        assert (await stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(TOKEN))).row_count == 1
    finally:
        SERVERS.unregister("127.0.0.1:18099")


@pytest.mark.parametrize("mib", [9, 5])  # over the server's 8 MiB receive limit; over the caller's 4 MiB
async def test_message_limits_match(pair, mib: int) -> None:
    _, real, inproc = pair
    big = data_pb2.QueryRequest(sql="y" * (mib * 1024 * 1024))  # the response echoes it
    results = [
        await outcome(data_pb2_grpc.DataServiceStub(c).Query(big, metadata=metadata(TOKEN)))
        for c in (real, inproc)
    ]
    assert results[0] == results[1]
    assert results[1][:2] == ("error", grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_a_real_service_over_inproc(settings_env: Path) -> None:
    """Our realtime service, its own build, through the kit: publish and receive on one connection."""
    from services.realtime.app import build as realtime_build

    async with running_service("realtime", realtime_build) as (runtime, _):
        assert runtime.inproc is not None
        async with runtime.inproc.channel() as channel:
            stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
            call = stub.Connect(metadata=metadata(TOKEN))
            await call.write(realtime_pb2.ConnectRequest(subscribe="room"))
            first = await asyncio.wait_for(call.read(), 5)
            assert first.type == "subscribed"
            call.cancel()
            bad = await outcome(stub.Publish(realtime_pb2.PublishRequest(topic="room"), metadata=metadata()))
            assert bad[1] is grpc.StatusCode.UNAUTHENTICATED


def _audit(runtime: Runtime, request_id: str) -> dict[str, Any] | None:
    lines = [orjson.loads(line) for line in runtime.audit.path.read_bytes().splitlines()]
    return next((e for e in lines if e.get("request_id") == request_id), None)


def _event(event: dict[str, Any] | None) -> dict[str, Any]:
    assert event is not None
    return {k: v for k, v in event.items() if k not in {"request_id", "prev", "hash", "ts", "seq", "time"}}


def _count(code: str) -> float:
    labels = {"service": "data", "method": "/launchpad.data.v1.DataService/Query", "code": code}
    return REGISTRY.get_sample_value("launchpad_rpc_requests_total", labels) or 0.0


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)
