"""/ws/realtime through the edge's fan-out (edge/fanout.py) and the real realtime service (embedded broker):
one Relay stream per edge process, each message sent once upstream and fanned out to the sockets locally."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from edge import fanout
from edge.errors import api_error, internal_message
from launchpad.api.v1 import options_pb2
from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core import internal
from services.core.config import load_settings
from services.core.errors import Code, ServiceError
from services.core.server import create_server, new_runtime
from services.realtime import protocol
from services.realtime.app import build
from tests.edge.test_edge_app import edge_app
from tests.edge.test_websocket import _verifier, closed_with, frame, send, serve_http
from tests.support import TEST_KEYS, free_address, make_token, metadata


class Edge:
    def __init__(self, address: str, app: Any, hub: Any, channel: Any) -> None:
        self.address, self.app, self.hub, self.channel = address, app, hub, channel

    def connect(self, token: str | None = None) -> Any:
        return connect(f"ws://{self.address}/ws/realtime?token={token or make_token()}")

    @property
    def relay(self) -> fanout.Relay:
        return socket_app(self.app).relay

    async def publish(self, topic: str, msg: Any, token: str | None = None) -> int:
        stub = realtime_pb2_grpc.RealtimeServiceStub(self.channel)
        request = realtime_pb2.PublishRequest(topic=topic)
        request.msg.struct_value.update(msg)
        return (await stub.Publish(request, metadata=metadata(token or make_token()))).offset


def socket_app(app: Any) -> Any:
    return app.edge_sockets["/ws/realtime"]


@pytest.fixture
async def edge(settings_env: Path) -> AsyncIterator[Edge]:
    runtime = new_runtime(load_settings("realtime"))
    runtime.keys = TEST_KEYS
    specs = await build(runtime)
    server, port = await create_server(runtime, specs, port=0)
    app = edge_app({"realtime": f"127.0.0.1:{port}", "auth": free_address()}, verifier=_verifier())
    try:
        assert isinstance(socket_app(app), fanout.FanoutSocket)
        async with serve_http(app) as address, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Edge(address, app, specs[0].servicer._hub, channel)
    finally:
        await app.state.edge.backends.close()
        await server.stop(None)
        await runtime.close()


async def until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        got = await frame(ws)
        if got["type"] == kind and not got.get("synthetic"):
            return got


async def test_publish_on_one_socket_reaches_the_others_with_the_connect_frame_shape(edge: Edge) -> None:
    async with edge.connect(make_token("ann")) as ann, edge.connect(make_token("bob")) as bob:
        for ws in (ann, bob):
            await send(ws, {"subscribe": "orders"})
            subscribed = await frame(ws)
            assert subscribed["type"] == "subscribed" and subscribed["topic"] == "orders"
        await send(ann, {"publish": {"topic": "orders", "msg": {"id": 7}}})
        # the ack and the message itself may come in either order (the relay does not wait for the ack)
        first, second = await frame(ann), await frame(ann)
        published, echoed = (first, second) if first["type"] == "published" else (second, first)
        assert published["type"] == "published" and published["offset"] == 1
        assert echoed["type"] == "message" and echoed["message"] == {"id": 7}
        assert published["epoch"] == subscribed["epoch"] and published["timestamp"]
        for got in (echoed, await until(bob, "message")):
            assert got["topic"] == "orders" and got["message"] == {"id": 7}
            assert got["offset"] == 1 and got["epoch"] == subscribed["epoch"] and got["timestamp"]


async def test_one_relay_subscription_per_channel_and_each_message_encoded_once(edge: Edge) -> None:
    relayed, fanned = fanout.RELAY_MESSAGES._value.get(), fanout.FANNED_OUT._value.get()
    sockets = [await edge.connect(make_token(f"u{i}")).__aenter__() for i in range(5)]
    try:
        for ws in sockets:
            await send(ws, {"topic": "fleet"})  # the seed's synonym of subscribe
            assert (await frame(ws))["type"] == "subscribed"
        (subs,) = edge.hub._subs.values()  # the service's one channel
        assert len(subs) == 1  # one relay subscription serves the five sockets
        await edge.publish("fleet", {"n": 1})
        for ws in sockets:
            assert (await until(ws, "message"))["message"] == {"n": 1}
        assert fanout.RELAY_MESSAGES._value.get() == relayed + 1
        assert fanout.FANNED_OUT._value.get() == fanned + 5
    finally:
        for ws in sockets:
            await ws.close()
    for _ in range(100):  # the last socket leaving unsubscribes the channel upstream
        if not edge.relay._channels:
            break
        await asyncio.sleep(0.02)
    assert not edge.relay._channels


async def test_tenants_never_receive_each_others_messages(edge: Edge) -> None:
    async with (
        edge.connect(make_token("a", tenant="acme")) as a,
        edge.connect(make_token("g", tenant="globex")) as g,
    ):
        for ws in (a, g):
            await send(ws, {"subscribe": "orders"})
            await frame(ws)
        await edge.publish("orders", {"secret": "globex"}, make_token("g2", tenant="globex"))
        await edge.publish("orders", {"secret": "acme"}, make_token("a2", tenant="acme"))
        assert (await until(a, "message"))["message"] == {"secret": "acme"}
        assert (await until(g, "message"))["message"] == {"secret": "globex"}
        await send(a, {"ping": True})
        assert (await until(a, "pong"))["type"] == "pong"  # nothing else was queued for acme


async def test_reconnect_with_offset_recovers_missed_messages_in_order(edge: Edge) -> None:
    async with edge.connect() as ws:
        await send(ws, {"subscribe": "audit"})
        epoch = (await frame(ws))["epoch"]
        await edge.publish("audit", {"n": 1})
        last = int((await until(ws, "message"))["offset"])
    for n in (2, 3, 4):  # missed while away
        await edge.publish("audit", {"n": n})
    async with edge.connect() as ws:
        await send(ws, {"subscribe": "audit", "offset": last, "epoch": epoch})
        subscribed = await frame(ws)
        assert subscribed["recovered"] is True and subscribed["offset"] == 4
        await edge.publish("audit", {"n": 5})
        got = [(await until(ws, "message"))["message"]["n"] for _ in range(4)]
        assert got == [2, 3, 4, 5]  # replay, then live, each once


async def test_refused_frames_get_an_error_frame_and_the_socket_goes_on(edge: Edge) -> None:
    viewer = make_token("vic", roles=("viewer",))
    async with edge.connect(viewer) as ws:
        await send(ws, {"subscribe": "no spaces/allowed"})
        error = await frame(ws)
        assert error["type"] == "error" and error["error"]["code"] == "INVALID_ARGUMENT"
        await send(ws, {"publish": {"topic": "orders", "msg": 1}})
        error = await frame(ws)
        assert error["error"]["code"] == "PERMISSION_DENIED"
        await send(ws, {"nonsense": 1})
        assert (await frame(ws))["type"] == "error"
        await send(ws, {})
        assert (await frame(ws))["error"]["code"] == "INVALID_ARGUMENT"
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"
    assert not edge.relay._channels  # the refused subscribe left nothing behind


async def test_missing_token_closes_1008_and_expired_token_closes_1008(edge: Edge) -> None:
    async with connect(f"ws://{edge.address}/ws/realtime") as ws:
        assert (await frame(ws))["error"]["code"] == "UNAUTHENTICATED"
        assert (await closed_with(ws))[0] == 1008
    async with edge.connect(make_token(ttl=2)) as ws:
        await send(ws, {"subscribe": "orders"})
        assert (await frame(ws))["type"] == "subscribed"
        error = await until(ws, "error")
        assert error["error"]["code"] == "UNAUTHENTICATED" and "expired" in error["error"]["message"]
        assert (await closed_with(ws))[0] == 1008


async def test_a_slow_socket_is_closed_1013_and_the_others_get_everything(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "QUEUE_LIMIT", 8)
    before = fanout.SLOW_DISCONNECTS._value.get()
    # A client that stops reading: max_queue=1 pauses its reads, and a small fixed receive buffer keeps the
    # kernel from absorbing megabytes first (setting SO_RCVBUF turns autotuning off).
    host, port = edge.address.rsplit(":", 1)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((host, int(port)))
    url = f"ws://{edge.address}/ws/realtime?token={make_token('slow')}"
    async with edge.connect() as fast, connect(url, max_queue=1, sock=raw) as slow:
        for ws in (fast, slow):
            await send(ws, {"subscribe": "firehose"})
            assert (await frame(ws))["type"] == "subscribed"
        received = 0

        async def drain() -> None:
            nonlocal received
            while True:
                if (await frame(fast))["type"] == "message":
                    received += 1

        reader = asyncio.create_task(drain())
        blob, sent = secrets.token_urlsafe(24_000), 0  # incompressible: permessage-deflate cannot shrink it
        while fanout.SLOW_DISCONNECTS._value.get() == before and sent < 2000:
            sent += 1
            await edge.publish("firehose", {"blob": blob})
        assert fanout.SLOW_DISCONNECTS._value.get() == before + 1
        for _ in range(200):
            if received == sent:
                break
            await asyncio.sleep(0.05)
        assert received == sent  # the fast socket got every message
        reader.cancel()
        codes = []
        with pytest.raises(ConnectionClosed):  # the frames in flight, then the error frame and the close
            while True:
                got = await frame(slow)
                codes.append((got.get("error") or {}).get("code"))
        assert codes[-1] == "RESOURCE_EXHAUSTED"
        assert slow.close_code == 1013


async def test_realtime_down_is_an_error_frame_and_close_1013_naming_the_service(settings_env: Path) -> None:
    app = edge_app({"realtime": free_address(), "auth": free_address()}, verifier=_verifier())
    async with serve_http(app) as address, connect(f"ws://{address}/ws/realtime?token={make_token()}") as ws:
        await send(ws, {"subscribe": "orders"})
        error = await frame(ws)
        assert error["error"]["code"] == "UNAVAILABLE" and "realtime service" in error["error"]["message"]
        assert (await closed_with(ws))[0] == 1013
    await app.state.edge.backends.close()


async def test_the_relay_needs_the_internal_credential(edge: Edge) -> None:
    stub = realtime_pb2_grpc.RealtimeServiceStub(edge.channel)

    async def one(md: Any) -> Any:
        request = realtime_pb2.RelayRequest(tenant="acme", topic="orders", id=1)
        call = stub.Relay(iter([request]), metadata=md)
        return await call.read()

    for md in (
        metadata(make_token(roles=("admin",))),
        (("x-request-id", "r"), (internal.METADATA_KEY, "no")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await one(md)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    secret = internal.internal_secret(load_settings("realtime"))
    answer = await one((("x-request-id", "r"), (internal.METADATA_KEY, secret)))
    assert answer.id == 1 and answer.frame.type == "subscribed" and answer.tenant == "acme"


async def test_an_offset_from_the_future_starts_from_now(edge: Edge) -> None:
    async with edge.connect() as ws:
        await send(ws, {"subscribe": "future", "offset": 10**9})
        subscribed = await frame(ws)
        assert subscribed["type"] == "subscribed" and subscribed["recovered"] is False
        await edge.publish("future", {"n": 1})
        assert (await until(ws, "message"))["message"] == {"n": 1}  # not held back until offset 10**9


def test_the_relay_and_the_publish_rpc_come_from_the_contracts_websocket_option() -> None:
    service = realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"]
    rule = service.methods_by_name["Connect"].GetOptions().Extensions[options_pb2.websocket]
    assert fanout._named(service, rule.relay, "relay").client_streaming
    publish = fanout._named(service, rule.publish, "publish")
    assert not publish.client_streaming and publish.input_type.name == "PublishRequest"
    with pytest.raises(ValueError, match="publish names no RPC"):
        fanout._named(service, "", "publish")


class _FailingCall:
    """A Relay call whose stream fails with `exc` at once."""

    def __init__(self, exc: BaseException) -> None:
        self.exc, self.cancelled = exc, False

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        raise self.exc

    def cancel(self) -> None:
        self.cancelled = True


async def test_a_relay_failure_is_described_once_through_the_one_error_mapping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Unexpected: logged once, the sockets told only the relay's request id; a backend error: named."""
    service = realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"]
    relay = fanout.Relay(Any, "realtime", service.methods_by_name["Relay"], "secret")  # type: ignore[arg-type]
    relay._request_id = "relay-test"
    member = fanout.Member(fanout.Outbox(), ("acme", "orders"))
    relay._channels[member.key] = {member}
    call = _FailingCall(RuntimeError("pool exploded: password=hunter2"))
    with caplog.at_level(logging.INFO, logger="launchpad.edge"):
        await relay._read(call, asyncio.Queue())
        failure = member.outbox.failure
        assert isinstance(failure, ServiceError) and call.cancelled
        told = api_error(failure, "socket-1")  # what each socket is told: no second log, no new id
    assert (told.code, told.message) == (Code.INTERNAL, internal_message("relay-test"))
    records = [r for r in caplog.records if r.name.startswith("launchpad.edge")]
    assert [r.exc_info is not None for r in records] == [True]
    assert "the realtime relay" in records[0].getMessage()

    member = fanout.Member(fanout.Outbox(), ("acme", "orders"))
    relay._channels[member.key] = {member}
    down = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "failed to connect to all"
    )
    await relay._read(_FailingCall(down), asyncio.Queue())
    told = api_error(member.outbox.failure, "socket-2")  # type: ignore[arg-type]
    assert (told.code, told.message) == (
        Code.UNAVAILABLE,
        "the realtime service is unavailable (cannot connect)",
    )
