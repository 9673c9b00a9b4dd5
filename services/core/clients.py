"""gRPC clients the kit needs itself: the auth service's JWKS, for verifying tokens everywhere."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc


def jwks_fetcher(address: str) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An async function returning the auth service's JWK Set (one channel, created lazily)."""
    stub: auth_pb2_grpc.AuthServiceStub | None = None

    async def fetch() -> dict[str, Any]:
        nonlocal stub
        if stub is None:
            stub = auth_pb2_grpc.AuthServiceStub(grpc.aio.insecure_channel(address))
        response = await stub.GetJwks(
            auth_pb2.GetJwksRequest(), metadata=(("x-request-id", f"jwks-{uuid.uuid4().hex}"),), timeout=3
        )
        return MessageToDict(response, preserving_proto_field_name=True)

    return fetch
