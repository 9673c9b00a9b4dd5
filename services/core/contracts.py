"""What the contracts say about each RPC, read once from the generated descriptors.

Both the service kit (auth, roles, audit) and the edge (routes, deadlines) read method options from here, so
the .proto files stay the single truth.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from launchpad.api.v1 import options_pb2

DEFAULT_TIMEOUT_MS = 10_000


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """Access rules and edge hints of one RPC, from its launchpad.api.v1 options."""

    full_name: str  # "/launchpad.data.v1.DataService/Query", as gRPC names it on the wire
    public: bool
    roles: frozenset[str]
    write: bool
    internal: bool  # called by Launchpad processes with the internal credential, never by clients
    websocket_path: str
    websocket_relay: str  # the internal RPC the edge multiplexes this WebSocket's sockets over
    websocket_publish: str  # the unary RPC a socket's publish frame is sent to, with the socket's token
    timeout_ms: int

    def allows(self, roles: tuple[str, ...]) -> bool:
        return not self.roles or any(role in self.roles for role in roles)


def wire_name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def method_policy(method: MethodDescriptor) -> MethodPolicy:
    options = method.GetOptions()
    access = options.Extensions[options_pb2.access]
    websocket = options.Extensions[options_pb2.websocket]
    return MethodPolicy(
        full_name=wire_name(method),
        public=access.public,
        roles=frozenset(access.roles),
        write=access.write,
        internal=access.internal,
        websocket_path=websocket.path,
        websocket_relay=websocket.relay,
        websocket_publish=websocket.publish,
        timeout_ms=options.Extensions[options_pb2.timeout_ms] or DEFAULT_TIMEOUT_MS,
    )


def service_policies(*services: ServiceDescriptor) -> dict[str, MethodPolicy]:
    """Policies of every method of the given services, keyed by wire name."""
    return {wire_name(m): method_policy(m) for s in services for m in s.methods}
