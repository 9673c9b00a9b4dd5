"""gRPC clients the kit needs itself: the auth service's JWKS, for verifying tokens everywhere."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from services.core.inproc import REGISTRY

# A peer that was down is retried at least every 2 s (gRPC's default backoff grows to 120 s), so calls work
# again within seconds of its return, however long it was away.
CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 2_000),)


def internal_channel(address: str) -> grpc.aio.Channel:
    """A channel from one Launchpad service to another (create it inside the serving event loop): in process
    when this process serves that address (the single topology), else over the network."""
    inproc = REGISTRY.channel(address, options=CHANNEL_OPTIONS)
    return inproc if inproc is not None else grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def jwks_fetcher(address: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An async function returning the auth service's JWK Set (one channel, created lazily)."""
    stub: auth_pb2_grpc.AuthServiceStub | None = None

    async def fetch() -> dict[str, Any]:
        nonlocal stub
        if stub is None:
            stub = auth_pb2_grpc.AuthServiceStub(internal_channel(address))
        response = await stub.GetJwks(
            auth_pb2.GetJwksRequest(), metadata=(("x-request-id", f"jwks-{uuid.uuid4().hex}"),), timeout=3
        )
        return MessageToDict(response, preserving_proto_field_name=True)

    return fetch
