"""What every endpoint shares: backend channels, the token verifier and the per-method stubs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import MethodDescriptor

from edge import codec
from edge.clients import Backends, JwksSource, authenticate
from services.core.tokens import TokenVerifier


@dataclass(slots=True)
class EdgeContext:
    """What every endpoint shares: channels and the token verifier."""

    backends: Backends
    verifier: TokenVerifier
    jwks: JwksSource | None = None  # when the keys come from the auth service
    stubs: dict[str, Any] = field(default_factory=dict)

    async def authenticate(self, authorization: str | None) -> tuple[Any, str]:
        return await authenticate(self.verifier, authorization, self.jwks)

    def multicallable(self, service: str, method: MethodDescriptor) -> Any:
        """The channel's callable for one RPC (unary or streaming), created once per method."""
        key = f"/{method.containing_service.full_name}/{method.name}"
        stub = self.stubs.get(key)
        if stub is None:
            channel = self.backends.channel(service)
            factory = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            stub = self.stubs[key] = factory(
                key,
                request_serializer=codec.message_class(method.input_type).SerializeToString,
                response_deserializer=codec.message_class(method.output_type).FromString,
                _registered_method=True,
            )
        return stub
