"""Wires the realtime service: the backend deps.select_mode picks (Kafka, Redis Streams or embedded).

KAFKA_URL wins when set (REDIS_URL is then not used by realtime: one backend per deployment, so every
replica must agree); else REDIS_URL; else the in-process broker. Topics obey the tenant's policies, read
from the platform database's policy book (access.py).
"""

from __future__ import annotations

from launchpad.realtime.v1 import realtime_pb2, realtime_pb2_grpc
from services.core.config import Settings
from services.core.deps import Mode, Registry, answers, keep_live, select_mode
from services.core.policy.book import open_policy_book
from services.core.server import Runtime, ServiceSpec
from services.realtime.access import Access
from services.realtime.backends import Backend, KafkaBackend, MemoryBackend, RedisBackend
from services.realtime.hub import Hub
from services.realtime.servicer import RealtimeServicer

REMEDIATION = "set REDIS_URL so several realtime replicas share topics, history and recovery"
KAFKA_REMEDIATION = "start the Kafka broker at KAFKA_URL so realtime replicas share topics and history"


async def open_kafka(settings: Settings, deps: Registry) -> Backend:
    """KAFKA_URL -> a topic per channel (live); down at start: fallback, or live and unhealthy when
    SIMULATION_MODE=false (publishes then fail with UNAVAILABLE instead of going somewhere else)."""
    backend = None
    reachable, detail = False, ""
    if settings.process.simulation_mode is not True:
        backend = KafkaBackend(settings.realtime.kafka_url, settings.realtime.history)
        reachable, detail = await answers(backend.ping, timeout_s=None)
    mode = select_mode(settings.process.simulation_mode, True, reachable)
    if mode is Mode.LIVE and backend is not None:
        dep = deps.add(
            "kafka", mode, settings.realtime.kafka_url, detail="one topic per channel", check=backend.ping
        )
        if not reachable:
            deps.mark("kafka", False, detail)
        dep.remediation = KAFKA_REMEDIATION
        return backend
    if backend is not None:
        await backend.close()
    deps.add("kafka", mode, "in-process", required=False, detail=detail, remediation=KAFKA_REMEDIATION)
    return MemoryBackend(settings.realtime.history)


async def open_backend(settings: Settings, deps: Registry) -> Backend:
    """KAFKA_URL -> Kafka; REDIS_URL -> Redis Streams (live); else the in-process broker (embedded, or
    fallback when down)."""
    if settings.realtime.kafka_url:
        return await open_kafka(settings, deps)
    live = None
    if settings.redis.url and settings.process.simulation_mode is not True:
        import redis.asyncio as redis

        # socket_timeout above the follower's XREAD BLOCK time, or every idle follow would time out.
        client = redis.from_url(settings.redis.url.reveal(), socket_timeout=15, socket_connect_timeout=2)
        live = RedisBackend(client, settings.realtime.history)
    mode, backend = await keep_live(
        deps, "redis", settings.process.simulation_mode, live,
        target=settings.redis.url.reveal(), detail="streams, MAXLEN ~history",
        unanswered="Redis not answering (SIMULATION_MODE=false: no fallback)", timeout_s=None,
    )  # fmt: skip
    if backend is not None:
        return backend
    deps.add("redis", mode, "in-process", required=False, remediation=REMEDIATION)
    return MemoryBackend(settings.realtime.history)


async def build(runtime: Runtime) -> list[ServiceSpec]:
    book = await open_policy_book(runtime)
    backend = await open_backend(runtime.settings, runtime.deps)
    hub = Hub(backend)
    hub.start()
    access = Access(book, hub)
    access.start()
    runtime.closers.append(backend.close)
    runtime.closers.append(hub.close)  # closers run in reverse: the hub stops before the backend closes
    runtime.closers.append(access.close)  # the re-check stops first
    runtime.log.info("realtime ready", extra={"backend": backend.name})
    descriptor = realtime_pb2.DESCRIPTOR.services_by_name["RealtimeService"]
    return [
        ServiceSpec(
            descriptor, RealtimeServicer(hub, access), realtime_pb2_grpc.add_RealtimeServiceServicer_to_server
        )
    ]
