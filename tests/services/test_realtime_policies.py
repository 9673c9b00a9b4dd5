"""Realtime topics obey policies (issue 11): `realtime:<topic>`, read = subscribe + replay, write = publish.

Real grpc.aio servers on port 0 with the embedded broker. The policy book is a stand-in (StubBook: the same
PolicySet the real book compiles, with a revision per change) so a test can change policies mid-stream;
the last test runs the real book on the platform database auth writes. The re-check period is 0.2 s here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.auth.store import AuthStore, PolicyRecord
from services.core import internal
from services.core.config import load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.core.errors import Unavailable
from services.core.policy import PolicySet, compile_set
from services.core.server import create_server, new_runtime
from services.realtime import access as access_module
from services.realtime import app as app_module
from services.realtime.access import Access
from services.realtime.app import build
from services.realtime.hub import Hub
from tests.services.test_realtime import Client as _Client
from tests.services.test_realtime import value
from tests.support import TEST_KEYS, make_token, metadata

PERIOD = 0.2  # the re-check period in these tests (RECHECK_S is 2 s)
ENDED_WITHIN = 5.0  # the contract: an open subscription that lost access ends within 5 s

# allow read on realtime:team-a* when subject.roles contains "developer"
TEAM_A = {
    "name": "team-a",
    "rules": [
        {
            "effect": "allow",
            "actions": ["read", "write"],
            "resource": "realtime:team-a*",
            "condition": {"subject.roles": {"contains": "developer"}},
        }
    ],
}
# everyone reads announcements and may publish anywhere, but nobody publishes announcements (deny wins)
ANNOUNCEMENTS = {
    "name": "announcements",
    "rules": [
        {"effect": "allow", "actions": ["read"], "resource": "realtime:announcements"},
        {"effect": "allow", "actions": ["write"], "resource": "realtime:*"},
        {"effect": "deny", "actions": ["write"], "resource": "realtime:announcements"},
    ],
}
READ_ALL = {"name": "read-all", "rules": [{"effect": "allow", "actions": ["read"], "resource": "realtime:*"}]}
# a policy on a table governs that table only: realtime stays ungoverned
TABLE_ONLY = {"name": "own-rows", "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes"}]}

ALICE = make_token("alice")  # developer
VIC = make_token("vic", roles=("viewer",))
ROOT = make_token("root", roles=("admin",))


class Client(_Client):
    """A Connect stream whose frames a task reads into a queue: a read that times out leaves the stream
    open (cancelling call.read() itself would cancel the RPC)."""

    def __init__(self, stub: Any, token: str) -> None:
        super().__init__(stub, token)
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self._pump = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            async for frame in self.call:
                self.frames.put_nowait(frame)
        except grpc.aio.AioRpcError as exc:
            self.frames.put_nowait(exc)

    async def read(self, timeout: float = 5.0) -> realtime_pb2.ConnectResponse:
        item = await asyncio.wait_for(self.frames.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item


class StubBook:
    """Stands in for PolicyBook: per tenant, the compiled set of the documents put last; each put is a
    revision. `reads` counts current() calls; `failing` makes them raise (the database is down)."""

    def __init__(self) -> None:
        self.sets: dict[str, PolicySet] = {}
        self.reads = 0
        self.failing = False

    def put(self, tenant: str, *documents: Mapping[str, Any]) -> None:
        revision = self.sets.get(tenant, PolicySet()).revision + 1
        self.sets[tenant] = compile_set(list(documents), revision)

    async def current(self, tenant: str) -> PolicySet:
        self.reads += 1
        if self.failing:
            raise Unavailable("the platform database is not answering")
        return self.sets.get(tenant, PolicySet())


@dataclass
class Served:
    stub: Any
    book: StubBook
    access: Access
    hub: Hub
    channel: grpc.aio.Channel

    def client(self, token: str = ALICE) -> Client:
        return Client(self.stub, token)

    async def publish(self, topic: str, token: str = ALICE, **msg: Any) -> realtime_pb2.PublishResponse:
        request = realtime_pb2.PublishRequest(topic=topic, msg=value(**msg))
        return await self.stub.Publish(request, metadata=metadata(token))


def stand_in(monkeypatch: pytest.MonkeyPatch) -> StubBook:
    """Realtime's build() gets the stub instead of the platform database's book; a short re-check period."""
    book = StubBook()

    async def open_book(runtime: Any) -> StubBook:
        return book

    monkeypatch.setattr(app_module, "open_policy_book", open_book)
    monkeypatch.setattr(access_module, "RECHECK_S", PERIOD)
    return book


@pytest.fixture
async def served(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    book = stand_in(monkeypatch)
    runtime = new_runtime(load_settings("realtime"))
    runtime.keys = TEST_KEYS
    specs = await build(runtime)
    server, port = await create_server(runtime, specs, port=0)
    servicer = specs[0].servicer
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
            yield Served(stub, book, servicer._access, servicer._hub, channel)
    finally:
        await server.stop(None)
        await runtime.close()


async def subscribe(c: Client, topic: str, **fields: Any) -> realtime_pb2.ConnectResponse:
    await c.send(subscribe=topic, **fields)
    return await answer(c)


async def answer(c: Client) -> realtime_pb2.ConnectResponse:
    """The answer to a subscribe: "subscribed" or "error" (heartbeats and messages skipped)."""
    while True:
        frame = await c.read()
        if frame.type in ("subscribed", "error"):
            return frame


async def no_error_for(c: Client, seconds: float) -> None:
    """Nothing but messages for `seconds`: no subscription of `c` ends."""
    with pytest.raises(TimeoutError):
        await c.until("error", timeout=seconds)


# --------------------------------------------------------------------------------------- decided at join


async def test_subscribe_is_decided_by_the_policy_for_each_subscriber(served: Served) -> None:
    served.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    alice, vic = served.client(ALICE), served.client(VIC)
    assert (await subscribe(alice, "team-a1")).type == "subscribed"
    refused = await subscribe(alice, "payroll")
    assert refused.type == "error" and refused.topic == "payroll"
    assert refused.error.code == "PERMISSION_DENIED"
    assert (
        "subscribing to 'payroll' is refused: policy denies read on realtime:payroll" in refused.error.message
    )
    assert "no rule matched (default deny)" in refused.error.message
    # the same topic, another subscriber: the viewer is not a developer
    refused = await subscribe(vic, "team-a1")
    assert refused.error.code == "PERMISSION_DENIED" and "team-a rule 0" in refused.error.message
    assert (await subscribe(vic, "announcements")).type == "subscribed"
    await vic.send(ping=True)
    assert (await vic.until("pong")).type == "pong"  # a refusal is a frame: the stream goes on
    # the refused subscription left nothing behind; the allowed ones get messages
    assert sorted(served.hub._subs) == ["acme/announcements", "acme/team-a1"]
    await served.publish("team-a1", n=1)
    assert (await alice.until("message")).message.struct_value["n"] == 1
    alice.call.cancel()
    vic.call.cancel()


async def test_replay_is_refused_with_the_subscribe(served: Served) -> None:
    for n in (1, 2, 3):  # published while the tenant was ungoverned
        await served.publish("payroll", n=n)
    served.book.put("acme", TEAM_A)
    c = served.client()
    await c.send(subscribe="payroll", offset=0)
    first = await c.read()
    assert first.type == "error" and first.error.code == "PERMISSION_DENIED"  # no message frame before it
    await c.send(ping=True)
    assert (await c.read()).type == "pong"  # and none after it either
    served.book.put("acme", TEAM_A, READ_ALL)  # now allowed: the same request replays
    await c.send(subscribe="payroll", offset=0)
    assert (await c.read()).type == "subscribed"
    assert [(await c.until("message")).message.struct_value["n"] for _ in range(3)] == [1, 2, 3]
    c.call.cancel()


# --------------------------------------------------------------------------------------- publish per call


async def test_publish_is_decided_per_call_and_a_matching_deny_wins(served: Served) -> None:
    served.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    c = served.client()
    await c.send(publish=realtime_pb2.PublishRequest(topic="announcements", msg=value(x=1)))
    refused = await c.until("error")
    assert refused.error.code == "PERMISSION_DENIED"
    message = refused.error.message
    assert (
        "publishing to 'announcements' is refused: policy denies write on realtime:announcements" in message
    )
    assert "announcements rule 2 (deny) matched" in message and "overrides allow" in message
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await served.publish("announcements")
    assert unary.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy denies write on realtime:announcements" in (unary.value.details() or "")
    assert (await served.publish("team-a1", n=1)).offset == 1  # allowed by team-a and by announcements
    await c.send(publish=realtime_pb2.PublishRequest(topic="elsewhere", msg=value(x=1)))
    assert (await c.until("published")).topic == "elsewhere"
    # the next publish sees a change at once (no re-check period for publishes)
    served.book.put("acme", TEAM_A)
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await served.publish("elsewhere")
    assert unary.value.code() == grpc.StatusCode.PERMISSION_DENIED
    c.call.cancel()


async def test_roles_apply_first_a_policy_never_lets_a_viewer_publish(served: Served) -> None:
    served.book.put("acme", ANNOUNCEMENTS)  # allows write on realtime:* to everyone
    reads = served.book.reads
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.publish("news", VIC)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        refused.value.details()
        == "Publish needs role admin or developer (your roles: viewer); ask a tenant admin"
    )
    c = served.client(VIC)
    await c.send(publish=realtime_pb2.PublishRequest(topic="news", msg=value(x=1)))
    error = await c.until("error")
    assert error.error.code == "PERMISSION_DENIED" and "developer or admin role" in error.error.message
    assert served.book.reads == reads  # refused by role before any policy was read
    c.call.cancel()


# --------------------------------------------------------------------------------------- policy changes


async def test_an_open_subscription_that_loses_access_ends_within_5s_and_the_rest_go_on(
    served: Served,
) -> None:
    c = served.client()
    for topic in ("payroll", "team-a1"):  # ungoverned: both allowed, as today
        assert (await subscribe(c, topic)).type == "subscribed"
    changed = time.monotonic()
    served.book.put("acme", TEAM_A)
    ended = await c.until("error", timeout=ENDED_WITHIN)
    assert time.monotonic() - changed < ENDED_WITHIN
    assert ended.topic == "payroll" and ended.error.code == "PERMISSION_DENIED"
    assert "subscription to 'payroll' ended: policy denies read on realtime:payroll" in ended.error.message
    assert "acme/payroll" not in served.hub._subs
    await served.publish("team-a1", n=1)
    assert (await c.until("message")).topic == "team-a1"  # the subscription still allowed goes on
    await no_error_for(c, 3 * PERIOD)  # and is not ended by the next sweeps
    assert (await subscribe(c, "payroll")).type == "error"  # a new subscribe is refused the same way
    c.call.cancel()


async def test_a_subscription_keeps_going_when_a_change_still_allows_it(served: Served) -> None:
    served.book.put("acme", TEAM_A)
    c = served.client()
    assert (await subscribe(c, "team-a1")).type == "subscribed"
    served.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    await no_error_for(c, 4 * PERIOD)
    await served.publish("team-a1", n=1)
    assert (await c.until("message")).message.struct_value["n"] == 1
    c.call.cancel()


async def test_admins_are_not_governed(served: Served) -> None:
    served.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    reads = served.book.reads
    root = served.client(ROOT)
    assert (await subscribe(root, "payroll", offset=0)).type == "subscribed"
    assert (await served.publish("announcements", ROOT, n=1)).offset == 1  # the deny does not apply
    assert (await served.publish("payroll", ROOT, n=2)).offset == 1
    assert (await root.until("message")).message.struct_value["n"] == 2
    assert served.book.reads == reads  # an admin's calls never read the policies
    served.book.put("acme", READ_ALL)
    await no_error_for(root, 4 * PERIOD)  # nor does a change end an admin's subscription
    root.call.cancel()


async def test_removing_the_policies_brings_back_todays_behaviour(served: Served) -> None:
    served.book.put("acme", TEAM_A, ANNOUNCEMENTS)
    c = served.client(VIC)
    assert (await subscribe(c, "payroll")).type == "error"
    served.book.put("acme")  # the last policy deleted: a new revision, nothing governs realtime
    assert (await subscribe(c, "payroll")).type == "subscribed"
    assert (await served.publish("announcements")).offset == 1
    served.book.put("acme", TABLE_ONLY)  # a table's policy does not govern topics
    await no_error_for(c, 4 * PERIOD)
    assert (await served.publish("announcements")).offset == 2
    c.call.cancel()


async def test_another_tenants_policies_change_nothing_here(served: Served) -> None:
    served.book.put("globex", TEAM_A)
    c = served.client(make_token("ann", tenant="initech"))
    assert (await subscribe(c, "payroll", offset=0)).type == "subscribed"
    assert (await served.publish("payroll", make_token("ann", tenant="initech"))).offset == 1
    served.book.put("globex", READ_ALL)
    await no_error_for(c, 3 * PERIOD)
    c.call.cancel()


async def test_the_recheck_is_one_policy_read_per_tenant_and_decides_nothing_when_nothing_changed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    served.book.put("acme", READ_ALL)
    clients = [served.client(make_token(f"u{i}")) for i in range(5)]
    for c in clients:
        assert (await subscribe(c, "feed")).type == "subscribed"
    decisions: list[Any] = []
    real = access_module.refusal
    monkeypatch.setattr(access_module, "refusal", lambda *a: decisions.append(a) or real(*a))
    await served.access.sweep()  # the subscriptions were admitted at this revision: nothing to decide
    reads = served.book.reads
    for _ in range(3):
        assert await served.access.sweep() == 0
    assert served.book.reads == reads + 3 and decisions == []  # one read per sweep for the one tenant
    served.book.put("acme", READ_ALL)  # a new revision with the same rules: each reader re-decided once
    assert await served.access.sweep() == 0
    assert len(decisions) == 5
    await served.access.sweep()
    assert len(decisions) == 5
    for c in clients:
        c.call.cancel()


async def test_policies_that_cannot_be_read_fail_closed_at_join_and_keep_open_subscriptions(
    served: Served,
) -> None:
    served.book.put("acme", READ_ALL)
    c = served.client()
    assert (await subscribe(c, "feed")).type == "subscribed"
    served.book.failing = True
    refused = await subscribe(c, "other")
    assert refused.error.code == "UNAVAILABLE"  # never "could not read, so allowed"
    with pytest.raises(grpc.aio.AioRpcError) as unary:
        await served.publish("feed")
    assert unary.value.code() == grpc.StatusCode.UNAVAILABLE
    served.book.put("acme", READ_ALL)
    await no_error_for(c, 3 * PERIOD)  # the re-check cannot read either: nothing is ended on a guess
    served.book.failing = False
    await served.publish("feed", ROOT, n=1)
    assert (await c.until("message")).message.struct_value["n"] == 1
    c.call.cancel()


# --------------------------------------------------------------------------------------- the edge's relay


class Relay:
    """A Relay stream as the edge opens it (internal credential), answering per id."""

    def __init__(self, served: Served) -> None:
        secret = internal.internal_secret(load_settings("realtime"))
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        md = (("x-request-id", "relay-test"), (internal.METADATA_KEY, secret))
        self.call = served.stub.Relay(self._frames(), metadata=md)

    async def _frames(self) -> AsyncIterator[Any]:
        while (item := await self.requests.get()) is not None:
            yield item

    async def send(self, **fields: Any) -> None:
        await self.requests.put(realtime_pb2.RelayRequest(tenant="acme", **fields))

    async def subscribe(self, id: int, topic: str, sub: str, *roles: str) -> Any:
        await self.send(id=id, topic=topic, subject=sub, roles=list(roles))
        return await self.answer(id)

    async def answer(self, id: int, timeout: float = 5.0) -> Any:
        """The next frame for `id` (skipping channel messages and other ids)."""
        while True:
            response = await asyncio.wait_for(self.call.read(), timeout)
            if response.id == id and response.frame.type != "message":
                return response.frame


async def test_the_relay_decides_each_sockets_subscribe_for_its_principal_and_ends_it_alone(
    served: Served,
) -> None:
    served.book.put("acme", READ_ALL)
    relay = Relay(served)
    assert (await relay.subscribe(1, "team-a1", "alice", "developer")).type == "subscribed"
    assert (await relay.subscribe(2, "team-a1", "vic", "viewer")).type == "subscribed"
    assert (await relay.subscribe(3, "team-a1", "root", "admin")).type == "subscribed"
    (sub,) = served.hub._subs["acme/team-a1"]  # one relay subscription for the three sockets
    assert sorted(sub.readers) == [1, 2, 3]
    served.book.put("acme", TEAM_A)  # viewers lose team-a*
    ended = await relay.answer(2, timeout=ENDED_WITHIN)
    assert ended.type == "error" and ended.topic == "team-a1" and ended.error.code == "PERMISSION_DENIED"
    assert "subscription to 'team-a1' ended" in ended.error.message
    assert sorted(sub.readers) == [1, 3]  # the developer and the admin stay
    refused = await relay.subscribe(4, "payroll", "alice", "developer")
    assert refused.type == "error" and refused.error.code == "PERMISSION_DENIED"
    assert "acme/payroll" not in served.hub._subs
    # sockets leave one by one (by the id of their subscribe); the last one takes the channel along
    await relay.send(id=1, topic="team-a1", unsubscribe=True)
    await relay.send(id=99, topic="team-a1", unsubscribe=True)  # never a member: no effect
    # the relay handles requests in order: the next answer means both leaves were handled
    assert (await relay.subscribe(5, "team-a2", "alice", "developer")).type == "subscribed"
    assert sorted(sub.readers) == [3] and "acme/team-a1" in served.hub._subs
    await relay.send(id=3, topic="team-a1", unsubscribe=True)
    assert (await relay.subscribe(6, "team-a3", "alice", "developer")).type == "subscribed"
    assert "acme/team-a1" not in served.hub._subs
    relay.call.cancel()


async def test_a_relay_subscribe_without_a_principal_is_governed(served: Served) -> None:
    served.book.put("acme", TEAM_A)
    relay = Relay(served)
    refused = await relay.subscribe(1, "team-a1", "")  # no roles: nothing a policy grants developers
    assert refused.type == "error" and refused.error.code == "PERMISSION_DENIED"
    relay.call.cancel()


# --------------------------------------------------------------------------------------- the real book


async def test_the_real_policy_book_on_the_platform_database(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What auth stores (a row and a revision bump in one transaction) is what realtime enforces."""
    monkeypatch.setattr(access_module, "RECHECK_S", PERIOD)
    settings = load_settings("auth")
    db = await open_platform_db(settings, Registry(), migrations=AUTH_MIGRATIONS)
    store = AuthStore(db)

    async def put(document: Mapping[str, Any]) -> None:
        now = int(time.time() * 1000)
        async with store.policy_transaction() as tx:
            await tx.ensure_tenant("acme", "root", now)
            await tx.insert(PolicyRecord("acme", document["name"], dict(document), now, "root"))
            await tx.bump_revision("acme")

    runtime = new_runtime(load_settings("realtime"))
    runtime.keys = TEST_KEYS
    specs = await build(runtime)
    server, port = await create_server(runtime, specs, port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
            c = Client(stub, ALICE)
            assert (await subscribe(c, "payroll")).type == "subscribed"  # nothing stored: as today
            await put(TEAM_A)
            ended = await c.until("error", timeout=ENDED_WITHIN)
            assert ended.topic == "payroll" and ended.error.code == "PERMISSION_DENIED"
            assert (await subscribe(c, "team-a1")).type == "subscribed"
            c.call.cancel()
    finally:
        await server.stop(None)
        await runtime.close()
        await db.close()
