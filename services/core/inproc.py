"""An in-process gRPC channel: grpc.aio's Channel interface, no HTTP/2, no socket, same server semantics.

A server registers its handlers on an InProcessServer exactly as on grpc.aio's (the generated
`add_*_to_server` calls add_generic_rpc_handlers / add_registered_method_handlers on it, Mirror feeds both at
once), with the same interceptors. Each call resolves its handler through those interceptors'
`intercept_service`, as grpc.aio does, so the kit's steps (request id, JWT, roles, audit, metrics, error
mapping) run unchanged. Callers get `server.channel()` (or `REGISTRY.channel(address)`) and use it like any
grpc.aio channel: generated stubs, the four multicallables, AioRpcError with trailers, deadlines, cancel.
The call objects live in services/core/inproc_calls.py, the server half in services/core/inproc_rpc.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from services.core.inproc_calls import (
    RequestCall,
    StreamStreamCall,
    StreamUnaryCall,
    UnaryStreamCall,
    UnaryUnaryCall,
)
from services.core.inproc_rpc import Limits, Metadata, Rpc, run_handler, too_large

DEFAULT_WINDOW = 32  # messages buffered per direction before the writer waits
_GRPC_CLIENT_RECEIVE = 4 * 1024 * 1024  # grpc's defaults when no option says otherwise
_GRPC_SERVER_RECEIVE = 4 * 1024 * 1024
Options = Sequence[tuple[str, Any]]


class _CallDetails(grpc.HandlerCallDetails):
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method, self.invocation_metadata = method, invocation_metadata


class InProcessServer(grpc.aio.Server):
    """Handlers and server interceptors of one gRPC server, served to in-process channels.

    It is a grpc.aio.Server for whoever registers on it (reflection picks its async servicer for it), but it
    has no port: add_*_port refuse. It serves from construction; stop() refuses new calls (UNAVAILABLE, as a
    server that is down) and ends in-flight ones; start() serves again.
    """

    def __init__(
        self, interceptors: Sequence[grpc.aio.ServerInterceptor] = (), options: Options = ()
    ) -> None:
        self._interceptors = tuple(interceptors)
        self._limits = Limits.of(options, _GRPC_SERVER_RECEIVE, -1)
        self._registered: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []
        self._active: set[Rpc] = set()
        self._serving = True
        self._stopped = asyncio.Event()

    # -- registration, as the generated add_*_to_server does it
    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for method, handler in method_handlers.items():
            self._registered[f"/{service_name}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        raise grpc.aio.UsageError("an in-process server has no port")

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        raise grpc.aio.UsageError("an in-process server has no port")

    # -- lifecycle
    async def start(self) -> None:
        self._serving = True
        self._stopped.clear()

    async def stop(self, grace: float | None) -> None:
        """Refuses new calls now; in-flight calls get `grace` seconds to finish, then are ended."""
        self._serving = False
        if grace and self._active:
            await asyncio.wait([asyncio.ensure_future(rpc.finished()) for rpc in self._active], timeout=grace)
        for rpc in list(self._active):
            rpc.cancel(grpc.StatusCode.UNAVAILABLE, "Server shutting down", local=False)
        self._stopped.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout)
        return self._stopped.is_set()

    # -- calls
    def methods(self) -> list[str]:
        """Wire names of the registered methods (generic handlers cannot be listed)."""
        return sorted(self._registered)

    def channel(self, options: Options = (), window: int = DEFAULT_WINDOW) -> InProcessChannel:
        return InProcessChannel(self, options, window)

    def begin(self, rpc: Rpc, request: bytes | None) -> None:
        """Starts one call's server side (UNAVAILABLE while stopped)."""
        if not self._serving:
            rpc.finish(grpc.StatusCode.UNAVAILABLE, "in-process server is not serving")
            return
        self._active.add(rpc)
        rpc.on_final.append(lambda: self._active.discard(rpc))
        rpc.start(lambda call: self._serve(call, request))

    async def _serve(self, rpc: Rpc, request: bytes | None) -> None:
        try:
            handler = await self._resolve(rpc.method, rpc.metadata)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # an interceptor failed: grpc.aio reports it the same way
            rpc.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")
            return
        if handler is None:
            rpc.finish(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        await run_handler(rpc, handler, self._limits, request)

    async def _resolve(self, method: str, metadata: Metadata) -> grpc.RpcMethodHandler | None:
        """The handler after every interceptor, in order, as grpc.aio's server resolves it."""
        details = _CallDetails(method, metadata)
        interceptors = iter(self._interceptors)

        async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            interceptor = next(interceptors, None)
            if interceptor is not None:
                return await interceptor.intercept_service(continuation, details)
            return self._lookup(details)

        return await continuation(details)

    def _lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._registered.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


class Mirror(grpc.aio.Server):
    """Registers every handler on a real grpc.aio server and on its in-process twin, so both serve the same
    servicer objects. Only registration is forwarded: ports and lifecycle stay the real server's."""

    def __init__(self, server: grpc.aio.Server, inproc: InProcessServer) -> None:
        self._targets = (server, inproc)

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        for target in self._targets:
            target.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for target in self._targets:
            target.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._targets[0].add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._targets[0].add_secure_port(address, server_credentials)

    async def start(self) -> None:
        raise grpc.aio.UsageError("start the real server itself")

    async def stop(self, grace: float | None) -> None:
        raise grpc.aio.UsageError("stop the real server itself")

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        raise grpc.aio.UsageError("wait on the real server itself")


class InProcessChannel(grpc.aio.Channel):
    """A grpc.aio.Channel whose calls go to an InProcessServer. Options: grpc.max_*_message_length."""

    def __init__(self, server: InProcessServer, options: Options = (), window: int = DEFAULT_WINDOW) -> None:
        self._server, self._window = server, window
        self._limits = Limits.of(options, _GRPC_CLIENT_RECEIVE, -1)
        self._calls: set[Rpc] = set()
        self._closed = False

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Cancels every active call (after `grace` seconds), as grpc.aio's close does: awaiting one raises
        CancelledError."""
        self._closed = True
        if grace and self._calls:
            await asyncio.wait([asyncio.ensure_future(rpc.finished()) for rpc in self._calls], timeout=grace)
        for rpc in list(self._calls):
            rpc.cancel(grpc.StatusCode.CANCELLED, "Locally cancelled by application!", local=True)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.SHUTDOWN if self._closed else grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() == last_observed_state:
            await asyncio.sleep(0.1)

    async def channel_ready(self) -> None:
        return None

    def start(self, method: str, request: bytes | None, timeout: float | None, metadata: Any) -> Rpc:
        """One call's shared state, its server side started (unless the request is still to come)."""
        if self._closed:
            raise grpc.aio.UsageError("Channel is closed.")
        rpc = Rpc(method, _metadata(metadata), timeout, self._window)
        failure = None if request is None else too_large(len(request), self._limits.send, "Sent")
        if failure is not None:
            rpc.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, failure)
            return rpc
        self._calls.add(rpc)
        rpc.on_final.append(lambda: self._calls.discard(rpc))
        self._server.begin(rpc, request)
        return rpc

    @property
    def limits(self) -> Limits:
        return self._limits

    def unary_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, method, request_serializer, response_deserializer, UnaryUnaryCall)

    def unary_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, method, request_serializer, response_deserializer, UnaryStreamCall)

    def stream_unary(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, method, request_serializer, response_deserializer, StreamUnaryCall)

    def stream_stream(self, method: str, request_serializer: Any = None, response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> _MultiCallable:  # fmt: skip
        return _MultiCallable(self, method, request_serializer, response_deserializer, StreamStreamCall)


class _MultiCallable(
    grpc.aio.UnaryUnaryMultiCallable,
    grpc.aio.UnaryStreamMultiCallable,
    grpc.aio.StreamUnaryMultiCallable,
    grpc.aio.StreamStreamMultiCallable,
):
    """One method of a channel; calling it starts a call of its kind (`kind` is the call class)."""

    def __init__(
        self,
        channel: InProcessChannel,
        method: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
        kind: type[RequestCall],
    ) -> None:
        self._channel, self._method, self._kind = channel, method, kind
        self._serializer, self._deserializer = serializer, deserializer

    def __call__(
        self,
        request: Any = None,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._kind(self._channel, self._method, request, timeout, metadata,
                          self._serializer, self._deserializer)  # fmt: skip


class Registry:
    """In-process servers by the address their real server listens on: a caller that would dial an address
    asks here first (`channel(address)` is None when nothing in this process serves it)."""

    def __init__(self) -> None:
        self._servers: dict[str, InProcessServer] = {}

    def register(self, server: InProcessServer, *addresses: str) -> None:
        for address in addresses:
            self._servers[address] = server

    def unregister(self, *addresses: str) -> None:
        for address in addresses:
            self._servers.pop(address, None)

    def server(self, address: str) -> InProcessServer | None:
        return self._servers.get(address)

    def channel(
        self, address: str, options: Options = (), window: int = DEFAULT_WINDOW
    ) -> InProcessChannel | None:
        server = self._servers.get(address)
        return None if server is None else server.channel(options, window)


REGISTRY = Registry()  # the process's in-process servers (empty unless a topology registers them)


def _metadata(metadata: Any) -> Metadata:
    return () if metadata is None else tuple((key, value) for key, value in metadata)
