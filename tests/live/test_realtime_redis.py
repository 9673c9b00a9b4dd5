"""Two realtime service instances sharing one real Redis (REDIS_URL): cross-process delivery and recovery."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.realtime.app import build
from tests.services.test_realtime import Client, value
from tests.support import make_token, metadata, running_service

pytestmark = pytest.mark.live


async def test_two_instances_share_topics_and_history(
    settings_env: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    tenant = f"t{uuid.uuid4().hex[:10]}"  # a fresh tenant: fresh streams, whatever Redis already holds
    token = make_token(tenant=tenant)
    async with (
        running_service("realtime", build) as (one_rt, one),
        running_service("realtime", build) as (_, two),
    ):
        modes = {d.name: d.mode for d in one_rt.deps.all()}  # and "sql": the policy book's database
        assert modes["redis"] == "live" and set(modes) == {"redis", "sql"}
        first, second = realtime_pb2_grpc.RealtimeServiceStub(one), realtime_pb2_grpc.RealtimeServiceStub(two)
        sub = Client(second, token)
        await sub.send(subscribe="orders")
        subscribed = await sub.read()
        assert subscribed.type == "subscribed" and subscribed.offset == 0
        answer = await first.Publish(realtime_pb2.PublishRequest(topic="orders", msg=value(n=1)),
                                     metadata=metadata(token))  # fmt: skip
        got = await sub.until("message")
        assert got.message.struct_value["n"] == 1 and got.offset == answer.offset == 1
        sub.call.cancel()

        for n in (2, 3, 4):  # published through instance one while the subscriber is away
            await first.Publish(
                realtime_pb2.PublishRequest(topic="orders", msg=value(n=n)), metadata=metadata(token)
            )
        back = Client(second, token)
        await back.send(subscribe="orders", offset=1, epoch=subscribed.epoch)
        resumed = await back.read()
        assert resumed.recovered is True and resumed.offset == 4
        assert [(await back.until("message")).message.struct_value["n"] for _ in range(3)] == [2, 3, 4]

        other = Client(first, make_token(tenant=f"{tenant}x"))  # same topic name, other tenant: nothing
        await other.send(subscribe="orders", offset=0)
        assert (await other.read()).offset == 0
        back.call.cancel()
        other.call.cancel()
