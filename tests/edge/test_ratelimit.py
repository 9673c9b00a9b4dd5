"""Rate limits: GCRA in memory and in Redis, per IP and per verified principal, 429 + Retry-After."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY

from edge.middleware.rate_limit import MemoryRateLimiter, RateLimitMiddleware, RedisRateLimiter, make_limiter
from services.core.config import SecretUrl, load_settings
from services.core.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, TEST_KEYS, make_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    principal = scope.get("state", {}).get("principal")
    body = principal.subject.encode() if principal else b"-"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def limited(limiter: Any, per_principal: int = 100, per_ip: int = 100) -> RateLimitMiddleware:
    verifier = TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE)
    return RateLimitMiddleware(ok_app, limiter, verifier, per_principal=per_principal, per_ip=per_ip)


def client(app: Any, ip: str = "10.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(ip, 5000)), base_url="http://edge")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- the memory limiter -----------------------------------------------------------------------------------


async def test_memory_burst_then_refill() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    assert [(await limiter.hit("k", 3))[0] for _ in range(3)] == [True, True, True]
    allowed, wait = await limiter.hit("k", 3)
    assert not allowed
    assert wait == pytest.approx(20.0)  # one request every 60/3 s
    clock.now += 19.9
    assert not (await limiter.hit("k", 3))[0]
    clock.now += 0.1
    assert (await limiter.hit("k", 3))[0]
    assert not (await limiter.hit("k", 3))[0]
    assert (await limiter.hit("other", 3))[0]  # keys are independent


@pytest.mark.parametrize("now", [4194253.626894796, 16345.053963634577])
async def test_memory_fresh_key_is_never_refused_by_float_rounding(now: float) -> None:
    # At these clock values now + 60.0 - 60.0 > now: a naive GCRA refuses the first request of a key.
    limiter = MemoryRateLimiter(clock=lambda: now)
    assert await limiter.hit("fresh", 1) == (True, 0.0)
    allowed, wait = await limiter.hit("fresh", 1)
    assert not allowed
    assert wait == pytest.approx(60.0)


async def test_memory_denied_requests_do_not_consume() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    await limiter.hit("k", 1)
    for _ in range(50):
        assert not (await limiter.hit("k", 1))[0]
    clock.now += 60
    assert (await limiter.hit("k", 1))[0]  # hammering while refused did not push the wait further


async def test_memory_is_bounded_by_max_keys() -> None:
    limiter = MemoryRateLimiter(max_keys=100, clock=Clock())
    for i in range(1000):
        await limiter.hit(f"ip:{i}", 10)
    assert len(limiter) == 100


async def test_memory_drops_idle_keys_without_reaching_the_cap() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(max_keys=10_000, clock=clock)
    for i in range(500):
        await limiter.hit(f"old:{i}", 600)
    clock.now += 1  # every old key is idle now (its bucket refilled 0.1 s after its only hit)
    for i in range(300):
        await limiter.hit(f"new:{i}", 600)
    assert len(limiter) <= 300


async def test_memory_eviction_keeps_recently_refused_keys() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(max_keys=10, clock=clock)
    await limiter.hit("attacker", 1)
    for i in range(30):
        assert not (await limiter.hit("attacker", 1))[0]  # refused hits keep the key recent
        await limiter.hit(f"other:{i}", 10)
    assert not (await limiter.hit("attacker", 1))[0]


# --- the middleware ---------------------------------------------------------------------------------------


async def test_ip_limit_answers_429_with_retry_after_and_json() -> None:
    app = limited(MemoryRateLimiter(), per_ip=2)
    async with client(app) as c:
        statuses = [(await c.get("/api/data/tables")).status_code for _ in range(2)]
        refused = await c.get("/api/data/tables")
    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"  # integer seconds: 60 / 2
    body = refused.json()
    assert body["code"] == 8  # RESOURCE_EXHAUSTED
    assert "rate limit" in body["message"]


async def test_retry_after_is_at_least_one_second() -> None:
    app = limited(MemoryRateLimiter(clock=Clock()), per_ip=120)  # one request every 0.5 s; time stands still
    async with client(app) as c:
        for _ in range(120):
            await c.get("/x")
        refused = await c.get("/x")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"


async def test_ips_are_independent() -> None:
    app = limited(MemoryRateLimiter(), per_ip=1)
    async with client(app, "10.0.0.1") as a, client(app, "10.0.0.2") as b:
        assert (await a.get("/x")).status_code == 200
        assert (await a.get("/x")).status_code == 429
        assert (await b.get("/x")).status_code == 200


async def test_principals_are_independent_of_each_other_and_of_the_ip() -> None:
    app = limited(MemoryRateLimiter(), per_principal=2, per_ip=100)
    alice, bob = bearer(make_token("alice")), bearer(make_token("bob"))
    async with client(app) as c:
        assert [(await c.get("/x", headers=alice)).status_code for _ in range(3)] == [200, 200, 429]
        response = await c.get("/x", headers=bob)
        assert response.status_code == 200
        assert response.text == "bob"  # the verified principal is left in scope["state"]
        assert (await c.get("/x")).status_code == 200  # anonymous, same IP: only the IP limit applies


async def test_one_principal_is_limited_across_ips() -> None:
    app = limited(MemoryRateLimiter(), per_principal=2, per_ip=100)
    token = bearer(make_token("alice"))
    async with client(app, "10.0.0.1") as a, client(app, "10.0.0.2") as b:
        assert (await a.get("/x", headers=token)).status_code == 200
        assert (await b.get("/x", headers=token)).status_code == 200
        assert (await b.get("/x", headers=token)).status_code == 429


async def test_principal_key_includes_the_tenant() -> None:
    app = limited(MemoryRateLimiter(), per_principal=1, per_ip=100)
    async with client(app) as c:
        assert (await c.get("/x", headers=bearer(make_token("admin", tenant="acme")))).status_code == 200
        assert (await c.get("/x", headers=bearer(make_token("admin", tenant="globex")))).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        make_token("alice", key=ec.generate_private_key(ec.SECP256R1())),  # forged: wrong key, same claims
        make_token("alice", ttl=-10),  # expired
        "not-a-jwt",
    ],
)
async def test_unverified_tokens_count_only_against_the_ip(token: str) -> None:
    limiter = MemoryRateLimiter()
    app = limited(limiter, per_principal=1, per_ip=100)
    async with client(app) as c:
        for _ in range(3):
            response = await c.get("/x", headers=bearer(token))
            assert response.status_code == 200
            assert response.text == "-"  # no principal
        # The real alice still has her whole budget: the forgeries never touched her key.
        assert (await c.get("/x", headers=bearer(make_token("alice")))).status_code == 200
    assert set(limiter._tat) == {"ip:10.0.0.1", "sub:acme/alice"}


async def test_key_source_failure_counts_only_against_the_ip() -> None:
    class DownKeys:
        async def key_for(self, kid: str) -> Any:
            raise ConnectionError("jwks endpoint unreachable")

    verifier = TokenVerifier(DownKeys(), ISSUER, AUDIENCE)
    app = RateLimitMiddleware(ok_app, MemoryRateLimiter(), verifier, per_principal=1, per_ip=100)
    async with client(app) as c:
        responses = [await c.get("/x", headers=bearer(make_token("alice"))) for _ in range(3)]
    assert [(r.status_code, r.text) for r in responses] == [(200, "-")] * 3  # no 500, no principal


@pytest.mark.parametrize("path", ["/health", "/metrics"])
async def test_health_and_metrics_are_exempt(path: str) -> None:
    app = limited(MemoryRateLimiter(), per_ip=1)
    async with client(app) as c:
        assert [(await c.get(path)).status_code for _ in range(5)] == [200] * 5
        assert (await c.get("/x")).status_code == 200
        assert (await c.get("/x")).status_code == 429


async def test_refusals_are_counted() -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("edge_rate_limited_total", {"scope": "ip"}) or 0.0

    before = count()
    app = limited(MemoryRateLimiter(), per_ip=1)
    async with client(app) as c:
        for _ in range(3):
            await c.get("/x")
    assert count() == before + 2


async def test_websocket_handshake_refused_with_close() -> None:
    app = limited(MemoryRateLimiter(), per_ip=1)
    sent: list[dict[str, Any]] = []
    reached: list[bool] = []

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    app.app = ws_app

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws/realtime", "headers": [], "client": ("10.0.0.9", 1)}
    await app(dict(scope), None, send)
    await app(dict(scope), None, send)
    assert reached == [True]
    assert sent == [{"type": "websocket.close", "code": 1013, "reason": "rate limit exceeded"}]


# --- Redis ------------------------------------------------------------------------------------------------


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[tuple[Any, Any, str]]:
    """Two separate clients (two edge replicas) and a unique key prefix, cleaned up afterwards."""
    prefix = f"test:rl:{uuid.uuid4().hex}:"
    first, second = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    try:
        yield first, second, prefix
    finally:
        keys = [key async for key in first.scan_iter(match=prefix + "*")]
        if keys:
            await first.delete(*keys)
        await first.aclose()
        await second.aclose()


async def test_redis_limit_is_shared_by_two_replicas(redis_clients: tuple[Any, Any, str]) -> None:
    first, second, prefix = redis_clients
    a, b = RedisRateLimiter(first, prefix=prefix), RedisRateLimiter(second, prefix=prefix)
    results = [(await (a if i % 2 else b).hit("ip:1.2.3.4", 4))[0] for i in range(4)]
    assert results == [True] * 4
    allowed_a, wait_a = await a.hit("ip:1.2.3.4", 4)
    allowed_b, wait_b = await b.hit("ip:1.2.3.4", 4)
    assert not allowed_a and not allowed_b
    assert 14.0 < wait_a <= 15.0  # 60 / 4 s per request
    assert 14.0 < wait_b <= 15.0
    assert (await b.hit("ip:5.6.7.8", 4))[0]
    assert a.failures == b.failures == 0


async def test_redis_keys_expire_when_idle(redis_clients: tuple[Any, Any, str]) -> None:
    first, _, prefix = redis_clients
    limiter = RedisRateLimiter(first, prefix=prefix)
    await limiter.hit("k", 60)  # one second of TAT ahead
    ttl_ms = await first.pttl(prefix + "k")
    assert 0 < ttl_ms <= 2000


async def test_redis_limit_through_the_middleware(redis_clients: tuple[Any, Any, str]) -> None:
    first, second, prefix = redis_clients
    replica_a = limited(RedisRateLimiter(first, prefix=prefix), per_ip=2)
    replica_b = limited(RedisRateLimiter(second, prefix=prefix), per_ip=2)
    async with client(replica_a) as a, client(replica_b) as b:
        assert (await a.get("/x")).status_code == 200
        assert (await b.get("/x")).status_code == 200
        refused = await a.get("/x")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) in (29, 30)


async def test_redis_down_fails_open_to_memory_and_counts() -> None:
    def errors() -> float:
        return REGISTRY.get_sample_value("edge_ratelimit_redis_errors_total") or 0.0

    before = errors()
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    limiter = RedisRateLimiter(dead, prefix="unused:")
    try:
        assert await limiter.hit("ip:1", 2) == (True, 0.0)
        assert (await limiter.hit("ip:1", 2))[0]
        assert not (await limiter.hit("ip:1", 2))[0]  # the fallback still enforces the limit
    finally:
        await dead.aclose()
    assert limiter.failures == 1  # then Redis is left alone for a while instead of timing out per request
    assert errors() == before + 1


async def test_make_limiter_follows_redis_url(settings_env: Path) -> None:
    settings = load_settings("edge")
    assert isinstance(make_limiter(settings), MemoryRateLimiter)
    redis_limiter = make_limiter(
        dataclasses.replace(
            settings, redis=dataclasses.replace(settings.redis, url=SecretUrl("redis://127.0.0.1:6379/0"))
        )
    )
    assert isinstance(redis_limiter, RedisRateLimiter)
    await redis_limiter._client.aclose()
