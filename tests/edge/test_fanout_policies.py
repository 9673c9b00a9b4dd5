"""/ws/realtime through the edge's fan-out obeys the tenant's policies (issue 11), decided by the realtime
service for each socket's principal: the edge relays each socket's subscribe with its principal and ends the
one socket's subscription the service revokes. Real uvicorn + real realtime service (embedded broker); the
policy book is the stand-in of tests/services/test_realtime_policies.py, re-checked every 0.2 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from edge import fanout
from services.core.config import load_settings
from services.core.server import create_server, new_runtime
from services.realtime.app import build
from tests.edge.test_edge_app import edge_app
from tests.edge.test_fanout import Edge, socket_app, until
from tests.edge.test_websocket import _verifier, frame, send, serve_http
from tests.services.test_realtime_policies import (
    ALICE,
    ANNOUNCEMENTS,
    ENDED_WITHIN,
    PERIOD,
    READ_ALL,
    ROOT,
    TEAM_A,
    VIC,
    StubBook,
    stand_in,
)
from tests.support import TEST_KEYS, free_address, make_token


class PolicedEdge(Edge):
    book: StubBook


@pytest.fixture
async def edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PolicedEdge]:
    book = stand_in(monkeypatch)
    runtime = new_runtime(load_settings("realtime"))
    runtime.keys = TEST_KEYS
    specs = await build(runtime)
    server, port = await create_server(runtime, specs, port=0)
    app = edge_app({"realtime": f"127.0.0.1:{port}", "auth": free_address()}, verifier=_verifier())
    try:
        assert isinstance(socket_app(app), fanout.FanoutSocket)
        async with serve_http(app) as address, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            policed = PolicedEdge(address, app, specs[0].servicer._hub, channel)
            policed.book = book
            yield policed
    finally:
        await app.state.edge.backends.close()
        await server.stop(None)
        await runtime.close()


async def answer(ws: Any) -> dict[str, Any]:
    """The answer to a subscribe: "subscribed" or "error"."""
    while True:
        got = await frame(ws)
        if got["type"] in ("subscribed", "error"):
            return got


async def subscribe(ws: Any, topic: str, **fields: Any) -> dict[str, Any]:
    await send(ws, {"subscribe": topic, **fields})
    return await answer(ws)


async def no_error_for(ws: Any, seconds: float) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(until(ws, "error"), seconds)


async def pong(ws: Any) -> None:
    await send(ws, {"ping": True})
    assert (await until(ws, "pong"))["type"] == "pong"


async def test_a_socket_subscribe_is_decided_for_that_sockets_principal(edge: PolicedEdge) -> None:
    edge.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    async with edge.connect(ALICE) as alice, edge.connect(VIC) as vic:
        assert (await subscribe(alice, "team-a1"))["type"] == "subscribed"
        refused = await subscribe(vic, "team-a1")  # the same channel, another principal
        assert refused["type"] == "error" and refused["topic"] == "team-a1"
        assert refused["error"]["code"] == "PERMISSION_DENIED"
        assert "policy denies read on realtime:team-a1" in refused["error"]["message"]
        assert "team-a rule 0" in refused["error"]["message"]
        refused = await subscribe(alice, "payroll")
        assert (
            refused["error"]["code"] == "PERMISSION_DENIED" and "default deny" in refused["error"]["message"]
        )
        assert (await subscribe(vic, "announcements"))["type"] == "subscribed"
        await pong(vic)  # refusals are frames: the sockets go on
        assert sorted(edge.relay._channels) == [("acme", "announcements"), ("acme", "team-a1")]
        (upstream,) = edge.hub._subs["acme/team-a1"]
        assert len(upstream.readers) == 1  # the service holds alice's subscription, not vic's refused one
        await edge.publish("team-a1", {"n": 1})
        assert (await until(alice, "message"))["message"] == {"n": 1}


async def test_replay_through_the_edge_is_refused_with_the_subscribe(edge: PolicedEdge) -> None:
    for n in (1, 2):
        await edge.publish("payroll", {"n": n})
    edge.book.put("acme", TEAM_A)
    async with edge.connect(ALICE) as ws:
        await send(ws, {"subscribe": "payroll", "offset": 0})
        first = await frame(ws)
        assert first["type"] == "error" and first["error"]["code"] == "PERMISSION_DENIED"
        await send(ws, {"ping": True})
        assert (await frame(ws))["type"] == "pong"  # no replayed message before or after the refusal
    assert not edge.relay._channels


async def test_publishing_from_a_socket_and_over_http_obeys_the_policy(edge: PolicedEdge) -> None:
    edge.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    async with edge.connect(ALICE) as ws:
        await send(ws, {"publish": {"topic": "announcements", "msg": {"x": 1}}})
        refused = await until(ws, "error")
        assert refused["error"]["code"] == "PERMISSION_DENIED"
        assert "announcements rule 2 (deny) matched" in refused["error"]["message"]
        await send(ws, {"publish": {"topic": "team-a1", "msg": {"x": 1}}})
        assert (await until(ws, "published"))["topic"] == "team-a1"
    async with httpx.AsyncClient(base_url=f"http://{edge.address}") as http:
        headers = {"Authorization": f"Bearer {ALICE}"}
        body = {"topic": "announcements", "msg": {"x": 1}}
        response = await http.post("/api/realtime/publish", json=body, headers=headers)
        assert response.status_code == 403
        assert "policy denies write on realtime:announcements" in response.text
        response = await http.post(
            "/api/realtime/publish", json={**body, "topic": "team-a2"}, headers=headers
        )
        assert response.status_code == 200 and response.json()["topic"] == "team-a2"


async def test_a_policy_change_ends_one_sockets_subscription_within_5s_and_keeps_the_socket(
    edge: PolicedEdge,
) -> None:
    edge.book.put("acme", READ_ALL)
    async with edge.connect(ALICE) as alice, edge.connect(VIC) as vic, edge.connect(ROOT) as root:
        for ws in (alice, vic, root):
            assert (await subscribe(ws, "team-a1"))["type"] == "subscribed"
        changed = time.monotonic()
        edge.book.put("acme", TEAM_A)  # viewers lose team-a*
        ended = await until(vic, "error")
        assert time.monotonic() - changed < ENDED_WITHIN
        assert ended["topic"] == "team-a1" and ended["error"]["code"] == "PERMISSION_DENIED"
        assert "subscription to 'team-a1' ended: policy denies read" in ended["error"]["message"]
        # the socket whose every topic ended stays open (like Centrifugo's unsubscribe push) ...
        await pong(vic)
        await edge.publish("team-a1", {"n": 1}, ROOT)
        for ws in (alice, root):  # ... the developer and the admin still get the channel ...
            assert (await until(ws, "message"))["message"] == {"n": 1}
        await send(vic, {"ping": True})
        assert (await frame(vic))["type"] == "pong"  # ... and the viewer no longer does: nothing before it
        assert len(edge.relay._channels[("acme", "team-a1")]) == 2
        (upstream,) = edge.hub._subs["acme/team-a1"]
        assert len(upstream.readers) == 2
        refused = await subscribe(vic, "team-a1")  # resubscribing is decided anew: refused
        assert refused["error"]["code"] == "PERMISSION_DENIED"
        edge.book.put("acme", TEAM_A, READ_ALL)
        assert (await subscribe(vic, "team-a1"))["type"] == "subscribed"  # and allowed again
        for ws in (alice, root):
            await no_error_for(ws, 3 * PERIOD)


async def test_the_last_socket_losing_access_takes_the_channel_along(edge: PolicedEdge) -> None:
    async with edge.connect(ALICE) as a, edge.connect(make_token("bob")) as b:
        for ws in (a, b):
            assert (await subscribe(ws, "payroll"))["type"] == "subscribed"
        edge.book.put("acme", TEAM_A)
        for ws in (a, b):
            assert (await until(ws, "error"))["topic"] == "payroll"
        assert not edge.relay._channels and "acme/payroll" not in edge.hub._subs
        assert (await subscribe(a, "team-a1"))["type"] == "subscribed"  # the socket goes on


async def test_removing_the_policies_brings_back_todays_behaviour_through_the_edge(
    edge: PolicedEdge,
) -> None:
    edge.book.put("acme", TEAM_A)
    async with edge.connect(VIC) as ws:
        assert (await subscribe(ws, "payroll"))["type"] == "error"
        edge.book.put("acme")
        assert (await subscribe(ws, "payroll"))["type"] == "subscribed"
        await edge.publish("payroll", {"n": 1})
        assert (await until(ws, "message"))["message"] == {"n": 1}


async def test_sockets_leaving_one_by_one_leave_the_service_by_id(edge: PolicedEdge) -> None:
    sockets = [await edge.connect(make_token(f"u{i}")).__aenter__() for i in range(3)]
    try:
        for ws in sockets:
            assert (await subscribe(ws, "fleet"))["type"] == "subscribed"
        (upstream,) = edge.hub._subs["acme/fleet"]
        assert len(upstream.readers) == 3
        await sockets[0].close()
        for _ in range(100):
            if len(upstream.readers) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(upstream.readers) == 2 and "acme/fleet" in edge.hub._subs
    finally:
        for ws in sockets[1:]:
            await ws.close()
    for _ in range(100):
        if "acme/fleet" not in edge.hub._subs:
            break
        await asyncio.sleep(0.02)
    assert "acme/fleet" not in edge.hub._subs and not edge.relay._members
