"""Rate limits per client IP and per verified principal (429 + Retry-After), in memory or shared via Redis.

Both limiters implement GCRA, the token bucket without a timer: a key may burst `limit` requests at once and
then gets one more every 60/limit seconds. The state per key is one number (the "theoretical arrival time"),
so a Redis round trip is one EVALSHA and the memory limiter stores one float per active key.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.errors import request_id_of, send_error
from edge.middleware.headers import header
from services.core.config import Settings
from services.core.errors import Code, ServiceError
from services.core.tokens import TokenVerifier

log = logging.getLogger("launchpad.edge.ratelimit")

LIMITED = Counter("edge_rate_limited_total", "Requests refused with 429", ["scope"])
REDIS_ERRORS = Counter("edge_ratelimit_redis_errors_total", "Redis failures; the memory limiter answered")

DEFAULT_EXEMPT = ("/health", "/metrics")


class RateLimiter(Protocol):
    async def hit(self, key: str, limit_per_minute: int) -> tuple[bool, float]:
        """Counts one request for `key`: (allowed, seconds until the next request would be allowed)."""
        ...


class MemoryRateLimiter:
    """GCRA per key in one process. Memory is bounded: idle keys are dropped, and at `max_keys` the least
    recently used key goes (it loses its state, which only ever lets that key through earlier)."""

    def __init__(self, max_keys: int = 100_000, clock: Any = time.monotonic) -> None:
        self.max_keys = max_keys
        self._clock = clock
        self._tat: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tat)

    async def hit(self, key: str, limit_per_minute: int) -> tuple[bool, float]:
        return self.hit_now(key, limit_per_minute)

    def hit_now(self, key: str, limit_per_minute: int) -> tuple[bool, float]:
        now = self._clock()
        interval = 60.0 / max(limit_per_minute, 1)
        tat = max(self._tat.get(key, now), now)
        # A full bucket holds `limit` requests (60 s of intervals). Written as tat - burst so a fresh key
        # (tat == now) is never refused by float rounding.
        allow_at = tat - (60.0 - interval)
        if now < allow_at:
            self._tat.move_to_end(key)  # only a stored key can be refused; refused keys stay recent
            return False, allow_at - now
        self._tat[key] = tat + interval
        self._tat.move_to_end(key)
        self._sweep(now)
        return True, 0.0

    def _sweep(self, now: float) -> None:
        # Keys are kept in least-recently-used order. A key whose TAT has passed is indistinguishable from a
        # new key, so dropping it changes nothing: pop a couple of idle ones from the front on every hit
        # (amortised O(1)), then the least recently used ones while over the cap.
        for _ in range(2):
            key, tat = next(iter(self._tat.items()))
            if tat > now:
                break
            del self._tat[key]
        while len(self._tat) > self.max_keys:
            self._tat.popitem(last=False)


# GCRA in one atomic step, on Redis's clock so replicas with skewed clocks agree. Microseconds keep a
# fractional interval exact enough; %.0f stores the TAT without Lua's 14-digit tostring rounding.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - (60000000 - interval)
if now < allow_at then return {0, math.ceil(allow_at - now)} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"""


class RedisRateLimiter:
    """GCRA in Redis, so every edge replica enforces one limit. Keys expire when idle.

    When Redis fails, the request is decided by an in-process MemoryRateLimiter (fail open to a per-replica
    limit, never a 500), the failure is counted, and Redis is left alone for `retry_after_s` so an outage
    does not add a timeout to every request.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = "launchpad:rl:",
        fallback: MemoryRateLimiter | None = None,
        retry_after_s: float = 5.0,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_GCRA)
        self.fallback = fallback or MemoryRateLimiter()
        self.failures = 0
        self._retry_after_s = retry_after_s
        self._down_until = 0.0

    async def hit(self, key: str, limit_per_minute: int) -> tuple[bool, float]:
        if time.monotonic() >= self._down_until:
            interval_us = 60_000_000 / max(limit_per_minute, 1)
            try:
                allowed, wait_us = await self._script(keys=[self._prefix + key], args=[interval_us])
                return bool(allowed), int(wait_us) / 1_000_000
            except Exception as exc:  # redis errors, timeouts, connection refused: all mean "not now"
                self.failures += 1
                REDIS_ERRORS.inc()
                self._down_until = time.monotonic() + self._retry_after_s
                log.warning(
                    "rate limiter: redis failed (%s), using the in-process limiter", type(exc).__name__
                )
        return await self.fallback.hit(key, limit_per_minute)


def make_limiter(settings: Settings) -> RateLimiter:
    """Redis when settings.redis.url is set, else in memory."""
    if not settings.redis.url:
        return MemoryRateLimiter()
    import redis.asyncio as redis

    client = redis.from_url(settings.redis.url.reveal(), socket_timeout=0.5, socket_connect_timeout=0.5)
    return RedisRateLimiter(client)


class RateLimitMiddleware:
    """Per client IP always; per principal too when the bearer token verifies.

    Keys are never built from unverified claims: a token that fails verification counts only against the IP
    (the route answers 401 later). The verified principal is left in scope["state"]["principal"].
    The client IP is scope["client"] -- run uvicorn with --proxy-headers/--forwarded-allow-ips behind a proxy
    rather than trusting X-Forwarded-For here. HTTP requests and WebSocket handshakes are limited.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        verifier: TokenVerifier | None,
        per_principal: int,
        per_ip: int,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.verifier = verifier
        self.per_principal = per_principal
        self.per_ip = per_ip
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        allowed, wait = await self.limiter.hit("ip:" + ip, self.per_ip)
        if allowed:
            subject = await self._principal_key(scope)
            if subject is not None:
                allowed, wait = await self.limiter.hit(subject, self.per_principal)
                if not allowed:
                    LIMITED.labels("principal").inc()
        else:
            LIMITED.labels("ip").inc()
        if allowed:
            await self.app(scope, receive, send)
        else:
            await self._refuse(scope, send, wait)

    async def _principal_key(self, scope: Scope) -> str | None:
        authorization = header(scope, b"authorization")
        if self.verifier is None or authorization is None:
            return None
        try:
            principal = await self.verifier.verify_header(authorization.decode("latin-1"))
        except ServiceError:
            return None  # not a valid token: the IP limit alone applies; the route answers 401
        except Exception as exc:
            # The key source failed (JWKS fetch down, ...): not the rate limiter's error to report; the route's
            # own verification answers for it. Count against the IP only.
            log.debug("rate limiter: token not verifiable (%s)", type(exc).__name__)
            return None
        scope.setdefault("state", {})["principal"] = principal
        return f"sub:{principal.tenant}/{principal.subject}"

    async def _refuse(self, scope: Scope, send: Send, wait: float) -> None:
        retry_after = max(1, math.ceil(wait))
        if scope["type"] == "websocket":
            # Closing before accept makes the server refuse the handshake (HTTP 403).
            await send({"type": "websocket.close", "code": 1013, "reason": "rate limit exceeded"})
            return
        await send_error(
            send,
            Code.RESOURCE_EXHAUSTED,
            f"rate limit exceeded; retry after {retry_after} s",
            request_id_of(scope),
            headers={"retry-after": str(retry_after)},
        )
