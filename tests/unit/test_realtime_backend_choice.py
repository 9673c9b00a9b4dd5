"""Which realtime backend start-up picks when REDIS_URL is set but Redis does not answer (DESIGN section 4)."""

from __future__ import annotations

from unittest import mock

import pytest

from services.core.config import load_settings
from services.core.deps import Mode, Registry
from services.realtime.app import open_backend
from services.realtime.backends import MemoryBackend, RedisBackend

NOBODY = "redis://127.0.0.1:1/0"  # port 1: nothing listens, the connection is refused at once


@pytest.mark.parametrize(
    ("simulation", "backend", "mode", "healthy"),
    [
        ("auto", MemoryBackend, Mode.FALLBACK, True),
        ("false", RedisBackend, Mode.LIVE, False),  # never publish somewhere else silently
        ("true", MemoryBackend, Mode.EMBEDDED, True),
    ],
)
async def test_a_redis_that_does_not_answer_falls_back_or_stays_live_and_unhealthy(
    simulation: str, backend: type, mode: Mode, healthy: bool
) -> None:
    env = {"REDIS_URL": NOBODY, "SIMULATION_MODE": simulation, "KAFKA_URL": ""}
    with mock.patch.dict("os.environ", env):
        deps = Registry()
        chosen = await open_backend(load_settings("realtime"), deps)
    try:
        (dep,) = deps.all()
        assert (type(chosen), dep.name, dep.mode, dep.healthy) == (backend, "redis", mode, healthy)
        if not healthy:
            assert "SIMULATION_MODE=false" in dep.detail
    finally:
        await chosen.close()
