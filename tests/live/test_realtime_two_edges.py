"""Several edge and realtime replicas sharing Redis, as separate processes: a message published through one
edge reaches a WebSocket subscriber connected to the other."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from services.launcher import Stack
from tests.conftest import LIVE_ENV
from tests.support import need_env

PASSWORD = "two-edges-pw-1"


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    redis_url = LIVE_ENV["REDIS_URL"] or need_env("REDIS_URL")
    data_dir: Path = tmp_path_factory.mktemp("two-edges")  # shared: one signing key, one admin
    base = {k: v for k, v in os.environ.items() if k not in ("KAFKA_URL", "POSTGRES_DSN", "SIMULATION_MODE")}
    base.update(
        REDIS_URL=redis_url,
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
    )
    replicas = []
    for offset in (31000, 33000):  # each also serves /metrics on its ports + 1000
        env = {**base, "LAUNCHPAD_EDGE_PORT": str(offset + 1)}
        env.update(
            {f"LAUNCHPAD_{n.upper()}_PORT": str(offset + p) for n, p in (("auth", 12), ("realtime", 15))}
        )
        replicas.append(Stack(env, services=["auth", "realtime"]))
    try:
        for replica in replicas:
            replica.start()
        yield replicas[0], replicas[1]
    finally:
        for replica in replicas:
            replica.stop()


async def test_publish_through_one_edge_reaches_a_subscriber_on_the_other(
    stacks: tuple[Stack, Stack],
) -> None:
    first, second = stacks
    async with httpx.AsyncClient(timeout=15) as http:
        login = await http.post(
            f"{first.edge_url}/auth/login", json={"username": "admin", "password": PASSWORD}
        )
        token = login.json()["token"]
        url = first.edge_url.replace("http://", "ws://") + f"/ws/realtime?token={token}"
        async with connect(url) as sub:
            await sub.send(orjson.dumps({"subscribe": "fanout"}).decode())
            assert orjson.loads(await asyncio.wait_for(sub.recv(), 10))["type"] == "subscribed"
            published = await http.post(
                f"{second.edge_url}/api/realtime/publish",
                json={"topic": "fanout", "msg": {"via": "second edge"}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert published.status_code == 200, published.text
            while (frame := orjson.loads(await asyncio.wait_for(sub.recv(), 10)))["type"] != "message":
                pass
            assert frame["topic"] == "fanout" and frame["message"] == {"via": "second edge"}
            assert frame["offset"] == published.json()["offset"]
