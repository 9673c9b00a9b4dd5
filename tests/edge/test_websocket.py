"""WebSocket <-> streaming RPC bridge, over a real uvicorn server and real grpc.aio servers.

The servicers here are TEST-ONLY implementations of the real contracts (launchpad.realtime.v1 Connect as an
echo/broadcast hub, launchpad.logs.v1 Tail as a generator); the real services come in a later issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from launchpad.logs.v1 import logs_pb2, logs_pb2_grpc
from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core.context import current_principal
from services.core.errors import PermissionDenied, Unavailable
from services.core.server import ServiceSpec
from tests.edge.test_edge_app import edge_app, kit_server
from tests.support import free_address, make_token


class RealtimeServicer(realtime_pb2_grpc.RealtimeServiceServicer):
    """Echo/broadcast hub: subscribe, publish to the tenant's subscribers, ping. Topic names trigger errors:
    "forbidden" -> PERMISSION_DENIED, "down" -> UNAVAILABLE, "crash" -> an unexpected exception."""

    def __init__(self) -> None:
        self.subscribers: dict[tuple[str, str], set[asyncio.Queue[Any]]] = {}
        self.active = 0
        self.opened = 0

    async def Connect(self, requests: Any, context: Any) -> AsyncIterator[realtime_pb2.ConnectResponse]:
        tenant = current_principal().tenant
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.opened += 1
        self.active += 1
        reader = asyncio.ensure_future(self._read(requests, outbox, tenant))
        try:
            while (item := await outbox.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            reader.cancel()
            for queues in self.subscribers.values():
                queues.discard(outbox)
            self.active -= 1

    async def _read(self, requests: Any, outbox: asyncio.Queue[Any], tenant: str) -> None:
        try:
            async for request in requests:
                for response in self._handle(request, outbox, tenant):
                    outbox.put_nowait(response)
        except Exception as exc:
            outbox.put_nowait(exc)
        else:
            outbox.put_nowait(None)

    def _handle(self, request: realtime_pb2.ConnectRequest, outbox: Any, tenant: str) -> list[Any]:
        Response = realtime_pb2.ConnectResponse
        if request.ping:
            return [Response(type="pong")]
        topic = request.subscribe or request.topic
        if topic:
            if topic == "forbidden":
                raise PermissionDenied("not your topic")
            if topic == "down":
                raise Unavailable("broker is down")
            if topic == "crash":
                raise RuntimeError("secret internals at /srv/hub.py")
            self.subscribers.setdefault((tenant, topic), set()).add(outbox)
            return [Response(type="subscribed", topic=topic)]
        publish = request.publish
        for queue in self.subscribers.get((tenant, publish.topic), ()):
            queue.put_nowait(Response(type="message", topic=publish.topic, message=publish.msg, offset=2**40))
        return [Response(type="published", topic=publish.topic)]


class LogsServicer(logs_pb2_grpc.LogsServiceServicer):
    """Tail: three lines "<query>:<level>:<n>" then stays open; query "burst" streams 1 KB lines without end;
    query "end" finishes after its lines."""

    def __init__(self) -> None:
        self.requests: list[tuple[logs_pb2.TailRequest, str, list[Any]]] = []
        self.ended = 0  # streams that stopped: cancelled, or failed writing to a client that went away
        self.produced = 0

    async def Tail(self, request: logs_pb2.TailRequest, context: Any) -> AsyncIterator[logs_pb2.TailResponse]:
        self.requests.append((request, current_principal().tenant, list(context.invocation_metadata())))
        try:
            if request.query == "burst":
                while True:
                    self.produced += 1
                    yield logs_pb2.TailResponse(entry=logs_pb2.LogEntry(message="x" * 1000))
            for n in range(3):
                yield logs_pb2.TailResponse(
                    entry=logs_pb2.LogEntry(message=f"{request.query}:{request.level}:{n}")
                )
            if request.query != "end":
                await asyncio.Event().wait()  # only a cancellation ends it
        finally:
            self.ended += 1


@contextlib.asynccontextmanager
async def serve_http(app: Any) -> AsyncIterator[str]:
    """The app on a real uvicorn server (port 0) in this event loop; yields host:port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", ws_max_size=1 << 20))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


class Bridge:
    def __init__(self, address: str, realtime: RealtimeServicer, logs: LogsServicer) -> None:
        self.address, self.realtime, self.logs = address, realtime, logs

    def connect(self, path: str, token: str | None = "default", **kwargs: Any) -> Any:
        token = make_token() if token == "default" else token
        query = f"{'&' if '?' in path else '?'}token={token}" if token else ""
        return connect(f"ws://{self.address}{path}{query}", **kwargs)


@pytest.fixture
async def bridge(settings_env: Any) -> AsyncIterator[Bridge]:
    realtime, logs = RealtimeServicer(), LogsServicer()
    realtime_spec = ServiceSpec(
        realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"],
        realtime,
        realtime_pb2_grpc.add_RealtimeServiceServicer_to_server,
    )
    logs_spec = ServiceSpec(
        logs_pb2.DESCRIPTOR.services_by_name["LogsService"],
        logs,
        logs_pb2_grpc.add_LogsServiceServicer_to_server,
    )
    async with (
        kit_server("realtime", realtime_spec) as realtime_addr,
        kit_server("logs", logs_spec) as logs_addr,
        kit_server("auth", _auth_spec()) as auth_addr,
    ):
        # relay=False: these are the per-socket bridge's tests (edge/fanout.py has its own, with the real service)
        app = edge_app({"realtime": realtime_addr, "logs": logs_addr, "auth": auth_addr}, relay=False)
        async with serve_http(app) as address:
            yield Bridge(address, realtime, logs)
        await app.state.edge.backends.close()


def _auth_spec() -> ServiceSpec:
    from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
    from tests.edge.test_edge_app import AuthServicer

    return ServiceSpec(
        auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
        AuthServicer(),
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
    )


async def frame(ws: ClientConnection) -> dict[str, Any]:
    return orjson.loads(await asyncio.wait_for(ws.recv(), 5))


async def send(ws: ClientConnection, value: Any) -> None:
    await ws.send(orjson.dumps(value).decode())


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), 5)
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code, caught.value.rcvd.reason


async def eventually(condition: Any, timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------------------------- bidi


async def test_bidi_frames_map_to_messages_both_ways(bridge: Bridge) -> None:
    async with bridge.connect("/ws/realtime") as ws:
        await send(ws, {"subscribe": "news"})
        subscribed = await frame(ws)
        assert subscribed == {
            "type": "subscribed",
            "topic": "news",
            "message": None,
            "offset": 0,
            "epoch": "",
            "timestamp": None,
            "synthetic": False,
            "error": None,
            "recovered": False,
        }
        await send(ws, {"publish": {"topic": "news", "msg": {"price": 1, "tags": ["a"]}}})
        first, second = await frame(ws), await frame(ws)
        message = first if first["type"] == "message" else second
        assert message["message"] == {"price": 1, "tags": ["a"]}
        assert message["offset"] == 2**40
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"


async def test_broadcast_reaches_other_connections_of_the_tenant_only(bridge: Bridge) -> None:
    async with (
        bridge.connect("/ws/realtime") as alice,
        bridge.connect("/ws/realtime", token=make_token(sub="bob")) as bob,
        bridge.connect("/ws/realtime", token=make_token(tenant="globex")) as other,
    ):
        for ws in (alice, bob, other):
            await send(ws, {"subscribe": "t"})
            assert (await frame(ws))["type"] == "subscribed"
        await send(alice, {"publish": {"topic": "t", "msg": "hi"}})
        received = await frame(bob)
        assert (received["type"], received["message"]) == ("message", "hi")
        await send(other, {"ping": True})
        assert (await frame(other))["type"] == "pong"  # nothing from acme's topic arrived before it


async def test_authorization_header_works_too(bridge: Bridge) -> None:
    headers = {"authorization": f"Bearer {make_token()}"}
    async with bridge.connect("/ws/realtime", token=None, additional_headers=headers) as ws:
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"


@pytest.mark.parametrize("token", [None, "garbage", make_token(ttl=-30), make_token(kid="other")])
async def test_missing_or_invalid_token_closes_1008_before_any_call(
    bridge: Bridge, token: str | None
) -> None:
    async with bridge.connect("/ws/realtime", token=token) as ws:
        error = await frame(ws)
        assert error["type"] == "error" and error["error"]["code"] == "UNAUTHENTICATED"
        code, _ = await closed_with(ws)
    assert code == 1008
    assert bridge.realtime.opened == 0


async def test_bad_frames_get_an_error_frame_and_the_stream_goes_on(bridge: Bridge) -> None:
    async with bridge.connect("/ws/realtime") as ws:
        await ws.send("{not json")
        error = await frame(ws)
        assert error["type"] == "error" and error["error"]["code"] == "INVALID_ARGUMENT"
        await send(ws, {"subscrib": "x"})
        unknown = await frame(ws)
        assert 'unknown field "subscrib"' in unknown["error"]["message"]
        await send(ws, {"ping": "yes"})
        assert '"ping"' in (await frame(ws))["error"]["message"]
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"


@pytest.mark.parametrize(
    ("topic", "code", "close"),
    [("forbidden", "PERMISSION_DENIED", 1008), ("down", "UNAVAILABLE", 1013), ("crash", "INTERNAL", 1011)],
)
async def test_backend_errors_become_an_error_frame_and_a_close_code(
    bridge: Bridge, topic: str, code: str, close: int
) -> None:
    async with bridge.connect("/ws/realtime") as ws:
        await send(ws, {"subscribe": topic})
        error = await frame(ws)
        assert error["type"] == "error" and error["error"]["code"] == code
        assert "secret" not in error["error"]["message"]
        closed = await closed_with(ws)
    assert closed[0] == close


async def test_backend_down_closes_1013_naming_the_service(settings_env: Any) -> None:
    app = edge_app({"realtime": free_address(), "auth": free_address()}, verifier=_verifier(), relay=False)
    async with serve_http(app) as address, connect(f"ws://{address}/ws/realtime?token={make_token()}") as ws:
        error = await frame(ws)
        assert error["error"]["code"] == "UNAVAILABLE"
        assert "realtime service" in error["error"]["message"]
        assert (await closed_with(ws))[0] == 1013
    await app.state.edge.backends.close()


def _verifier() -> Any:
    from services.core.tokens import TokenVerifier
    from tests.support import AUDIENCE, ISSUER, TEST_KEYS

    return TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE)


async def test_client_disconnect_cancels_the_bidi_call(bridge: Bridge) -> None:
    async with bridge.connect("/ws/realtime") as ws:
        await send(ws, {"subscribe": "t"})
        await frame(ws)
        assert bridge.realtime.active == 1
    await eventually(lambda: bridge.realtime.active == 0)


# ----------------------------------------------------------------------------------- server streams


async def test_server_stream_request_from_query_parameters(bridge: Bridge) -> None:
    async with bridge.connect("/ws/logs?query=%7Bservice%3D%22data%22%7D&level=error") as ws:
        lines = [(await frame(ws))["entry"]["message"] for _ in range(3)]
    assert lines == ['{service="data"}:error:0', '{service="data"}:error:1', '{service="data"}:error:2']


async def test_a_client_frame_restarts_the_stream_with_the_new_request(bridge: Bridge) -> None:
    async with bridge.connect("/ws/logs?query=a&level=warn") as ws:
        for _ in range(3):
            await frame(ws)
        await send(ws, {"query": "b"})
        restarted = [(await frame(ws))["entry"]["message"] for _ in range(3)]
        assert restarted == ["b:warn:0", "b:warn:1", "b:warn:2"]  # query parameters stay, the frame overrides
        await ws.send("[1]")
        assert (await frame(ws))["error"]["code"] == "INVALID_ARGUMENT"
    await eventually(lambda: bridge.logs.ended == 2)
    assert [r.query for r, _, _ in bridge.logs.requests] == ["a", "b"]


async def test_server_stream_end_closes_normally(bridge: Bridge) -> None:
    async with bridge.connect("/ws/logs?query=end") as ws:
        for _ in range(3):
            await frame(ws)
        assert (await closed_with(ws))[0] == 1000


async def test_bad_query_parameter_is_an_error_frame_and_1008(bridge: Bridge) -> None:
    async with bridge.connect("/ws/realtime?ping=maybe") as ws:  # bidi: query parameters are not requests
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"
    async with connect(f"ws://{bridge.address}/ws/logs?token={make_token()}&level=a&level=b") as ws:
        error = await frame(ws)
        assert error["error"]["code"] == "INVALID_ARGUMENT" and '"level"' in error["error"]["message"]
        assert (await closed_with(ws))[0] == 1008
    assert bridge.logs.requests == []


async def test_tenant_comes_from_the_token_not_from_the_client(bridge: Bridge) -> None:
    headers = {"x-tenant-id": "evil"}
    async with bridge.connect("/ws/logs?query=q&x-tenant-id=evil", additional_headers=headers) as ws:
        await frame(ws)
    _, tenant, metadata = bridge.logs.requests[0]
    assert tenant == "acme"
    assert [v for k, v in metadata if k == "x-tenant-id"] == ["acme"]


async def test_client_disconnect_cancels_the_server_stream(bridge: Bridge) -> None:
    async with bridge.connect("/ws/logs?query=q") as ws:
        await frame(ws)
    await eventually(lambda: bridge.logs.ended == 1)


async def test_a_slow_client_holds_the_backend_back(bridge: Bridge) -> None:
    """No unbounded buffering: while the client reads nothing, the backend's generator stops producing.

    Compression is off so each 1 KB line costs 1 KB of buffer; the stall point is what the kernel socket,
    WebSocket and HTTP/2 flow-control buffers hold together (a few MB).
    """
    # close_timeout: with its receive queue full, this client cannot see the server's close frame.
    async with bridge.connect("/ws/logs?query=burst", max_queue=1, compression=None, close_timeout=0.2) as ws:
        await frame(ws)
        await asyncio.sleep(1.5)
        stalled_at = bridge.logs.produced
        await asyncio.sleep(0.5)
        assert bridge.logs.produced == stalled_at  # blocked by flow control, not racing ahead
        assert stalled_at < 20_000
        for _ in range(50):
            await frame(ws)  # reading again lets it continue
    await eventually(lambda: bridge.logs.ended == 1)


def test_tokens_in_websocket_urls_are_redacted_from_server_logs() -> None:
    import logging

    from edge.__main__ import RedactTokens

    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        "",
        0,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/ws/logs?token=eyJ.a.b&query=x"),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == '1.2.3.4:5 - "WebSocket /ws/logs?token=***&query=x" [accepted]'
