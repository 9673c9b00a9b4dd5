"""The Kafka backend (KAFKA_URL): two realtime instances sharing one broker, plus its start-up modes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.realtime.app import build
from services.realtime.backends import kafka_topic
from tests.conftest import LIVE_ENV
from tests.services.test_realtime import Client, value
from tests.support import free_address, make_token, metadata, need_env, running_service


@pytest.fixture
def kafka_url(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real Kafka API (KAFKA_URL) set in the isolated environment; skips when unset."""
    url = LIVE_ENV["KAFKA_URL"] or need_env("KAFKA_URL")
    monkeypatch.setenv("KAFKA_URL", url)
    return url


def test_topic_names_are_kafka_safe_and_keep_tenants_apart() -> None:
    assert kafka_topic("acme/naksha.telemetry") == "lp.acme.naksha.telemetry"
    # a dot in a tenant must not let it alias another tenant's topic
    assert kafka_topic("a.b/c") != kafka_topic("a/b.c")
    assert kafka_topic("a_2eb/c") != kafka_topic("a.b/c")
    odd = kafka_topic("acme/orders übel/#1")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in odd)
    long_one, other = kafka_topic("acme/" + "x" * 300), kafka_topic("acme/" + "x" * 301)
    assert len(long_one) <= 249 and long_one.startswith("lph.") and long_one != other


def kafka_dep(runtime: Any) -> Any:
    """The broker's dependency (realtime also has "sql": the platform database its policy book reads)."""
    deps = {dep.name: dep for dep in runtime.deps.all()}
    assert set(deps) == {"kafka", "sql"}
    return deps["kafka"]


async def test_broker_down_falls_back_in_auto_mode(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_URL", free_address())
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # ignored: KAFKA_URL wins
    async with running_service("realtime", build) as (runtime, _):
        dep = kafka_dep(runtime)
        assert (dep.name, dep.mode) == ("kafka", "fallback") and dep.target == "in-process"


async def test_broker_down_with_simulation_off_is_unhealthy_not_in_process(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_URL", free_address())
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with running_service("realtime", build) as (runtime, channel):
        dep = kafka_dep(runtime)
        assert (dep.name, dep.mode, dep.healthy) == ("kafka", "live", False)
        assert not runtime.deps.serving()
        stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
        with pytest.raises(Exception) as failure:  # never written somewhere else silently
            await stub.Publish(
                realtime_pb2.PublishRequest(topic="orders", msg=value(n=1)), metadata=metadata(make_token())
            )
        assert "UNAVAILABLE" in str(failure.value)


@pytest.mark.live
async def test_two_instances_share_topics_and_history(kafka_url: str) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"  # a fresh tenant: fresh topics, whatever the broker already holds
    token = make_token(tenant=tenant)
    async with (
        running_service("realtime", build) as (one_rt, one),
        running_service("realtime", build) as (_, two),
    ):
        kafka = [(d.name, d.mode, d.healthy) for d in one_rt.deps.all() if d.name == "kafka"]
        assert kafka == [("kafka", "live", True)]
        first, second = realtime_pb2_grpc.RealtimeServiceStub(one), realtime_pb2_grpc.RealtimeServiceStub(two)
        sub = Client(second, token)
        await sub.send(subscribe="orders")
        subscribed = await sub.read()
        assert subscribed.type == "subscribed" and subscribed.offset == 0 and subscribed.epoch == "kafka"
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
        await first.Publish(realtime_pb2.PublishRequest(topic="orders", msg=value(n=5)),
                            metadata=metadata(token))  # fmt: skip
        assert (await back.until("message")).message.struct_value["n"] == 5
        await first.Publish(realtime_pb2.PublishRequest(topic="orders", msg=value(mine=True)),
                            metadata=metadata(make_token(tenant=f"{tenant}x")))  # fmt: skip
        mine = await other.until("message")  # its first message is its own tenant's, never n=5
        assert mine.message.struct_value["mine"] is True and mine.offset == 1
        back.call.cancel()
        other.call.cancel()


@pytest.mark.live
async def test_offset_beyond_the_history_is_not_recovered(
    kafka_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_REALTIME_HISTORY", "2")
    token = make_token(tenant=f"t{uuid.uuid4().hex[:10]}")
    async with running_service("realtime", build) as (_, channel):
        stub = realtime_pb2_grpc.RealtimeServiceStub(channel)
        for n in range(1, 6):
            await stub.Publish(
                realtime_pb2.PublishRequest(topic="t", msg=value(n=n)), metadata=metadata(token)
            )
        late = Client(stub, token)
        await late.send(subscribe="t", offset=1, epoch="kafka")
        answer = await late.read()
        assert answer.recovered is False and answer.offset == 5
        assert [(await late.until("message")).message.struct_value["n"] for _ in range(2)] == [4, 5]
        late.call.cancel()
