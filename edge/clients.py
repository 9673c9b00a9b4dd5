"""Backend channels, deadlines, call metadata and the edge's own token verification.

One grpc.aio channel per backend address, created on first use inside the running event loop and shared by
every route of that service (HTTP/2 multiplexes the calls); an in-process one when this process serves that
address. Metadata carries exactly what the backends need: the verified bearer token, the request id, and the
tenant taken from the verified token -- nothing a client sent is copied through, so a client `x-tenant-id`
never reaches a service.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import grpc
from starlette.types import Scope

from edge import codec
from edge.errors import BackendCallFailed
from launchpad.auth.v1 import auth_pb2
from services.core import inproc
from services.core.clients import CHANNEL_OPTIONS
from services.core.config import Settings
from services.core.context import Principal
from services.core.errors import InvalidArgument, Unauthenticated
from services.core.tokens import RefreshingKeys, TokenVerifier

_MAX_MESSAGE = 8 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    *CHANNEL_OPTIONS,  # a backend that was down is retried every 2 s at most: routes recover within seconds
)
JWKS_TIMEOUT_S = 3.0
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_GET_JWKS = "/launchpad.auth.v1.AuthService/GetJwks"


class Backends:
    """One channel per backend address; `close()` at shutdown."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = dict(addresses)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def address(self, service: str) -> str:
        try:
            return self.addresses[service]
        except KeyError:
            raise ValueError(f"no address configured for the {service} service") from None

    def channel(self, service: str) -> grpc.aio.Channel:
        address = self.address(service)
        channel = self._channels.get(address)
        if channel is None:
            # In process when this process serves the address (the single topology), else over HTTP/2.
            channel = inproc.REGISTRY.channel(address, options=_CHANNEL_OPTIONS)
            if channel is None:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


def parse_grpc_timeout(value: str) -> float:
    """`grpc-timeout` header ("500m", "2S", "1H") -> seconds, as the gRPC HTTP/2 spec spells it."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise InvalidArgument(f"invalid grpc-timeout header {value[:40]!r}: expected e.g. 500m or 2S")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def deadline(default_s: float | None, header: str | None) -> float | None:
    """The call's timeout in seconds: the route's default, lowered (never raised) by a grpc-timeout header."""
    if header is None:
        return default_s
    requested = parse_grpc_timeout(header)
    return requested if default_s is None else min(default_s, requested)


def call_metadata(
    request_id: str, principal: Principal | None, token: str | None, client_ip: str = ""
) -> tuple[tuple[str, str], ...]:
    """What the backend sees: request id and the client's address (the edge's own view, replacing any
    client-sent x-forwarded-for: auth limits failed logins per client); token and tenant only when verified."""
    base = (
        (("x-request-id", request_id), ("x-forwarded-for", client_ip))
        if client_ip
        else (("x-request-id", request_id),)
    )
    if principal is None or token is None:
        return base
    return (*base, ("authorization", f"Bearer {token}"), ("x-tenant-id", principal.tenant))


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


class JwksSource:
    """async () -> the auth service's JWK Set, over the edge's own channel to auth.

    A failed fetch raises BackendCallFailed (a ServiceError, so callers that only expect token errors cope)
    and is remembered: while the keys cannot be fetched, "unknown key" means "auth is down", not "forged".
    """

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.failure: BackendCallFailed | None = None
        self._encode = codec.encoder(auth_pb2.GetJwksResponse.DESCRIPTOR)

    async def __call__(self) -> dict[str, Any]:
        get_jwks = self.backends.channel("auth").unary_unary(
            _GET_JWKS,
            request_serializer=auth_pb2.GetJwksRequest.SerializeToString,
            response_deserializer=auth_pb2.GetJwksResponse.FromString,
            _registered_method=True,
        )
        metadata = (("x-request-id", f"edge-jwks-{uuid.uuid4().hex}"),)
        try:
            response = await get_jwks(auth_pb2.GetJwksRequest(), metadata=metadata, timeout=JWKS_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.failure = BackendCallFailed(exc, "auth")
            raise self.failure from None
        self.failure = None
        return self._encode(response)


def make_verifier(settings: Settings, jwks: JwksSource) -> TokenVerifier:
    """ES256 verification with keys from the auth service (refreshed on an unknown kid)."""
    return TokenVerifier(RefreshingKeys(jwks), settings.auth.issuer, settings.auth.audience)


async def authenticate(
    verifier: TokenVerifier, authorization: str | None, jwks: JwksSource | None = None
) -> tuple[Principal, str]:
    """Verifies `Authorization: Bearer <jwt>` -> (principal, token). Unauthenticated (401) when it does not
    verify; BackendCallFailed (503) when the keys cannot be fetched from the auth service."""
    try:
        principal = await verifier.verify_header(authorization)
    except Unauthenticated:
        if jwks is not None and jwks.failure is not None and authorization:
            raise jwks.failure from None
        raise
    return principal, (authorization or "").partition(" ")[2].strip()
