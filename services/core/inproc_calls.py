"""The caller's half of the in-process channel: call objects that behave as grpc.aio's.

Awaiting a unary call returns its response or raises AioRpcError (with the server's initial and trailing
metadata); a call the caller cancelled raises CancelledError instead, as grpc.aio does. Streaming calls
offer async iteration or read(), write() and done_writing(), with the same mixing rules and the same
errors after the call ended (InvalidStateError, AioRpcError).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator
from typing import Any

import grpc
from grpc.aio import Metadata

from services.core.inproc_rpc import END, EOF, Rpc, Status, deserialize, serialize, too_large

log = logging.getLogger("launchpad.inproc")
_LOCAL_CANCELLATION = "Locally cancelled by application!"
_API_STYLE_ERROR = "The iterator and read/write APIs may not be mixed on a single RPC."
_ITERATOR, _READER_WRITER = "iterator", "reader/writer"


class _Call(grpc.aio.Call):
    """Status, metadata and cancellation of one in-process call."""

    def __init__(self, channel: Any, method: str, request: bytes | None, timeout: float | None,
                 metadata: Any, deserializer: Callable[[bytes], Any] | None) -> None:  # fmt: skip
        self._deserializer = deserializer
        self._receive_limit = channel.limits.receive
        self._rpc: Rpc = channel.start(method, request, timeout, metadata)

    def __del__(self) -> None:
        rpc = getattr(self, "_rpc", None)
        if rpc is not None and rpc.final is None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                rpc.cancel(grpc.StatusCode.CANCELLED, "Cancelled upon garbage collection!", local=True)

    def cancelled(self) -> bool:
        final = self._rpc.final
        return final is not None and final.code is grpc.StatusCode.CANCELLED

    def cancel(self) -> bool:
        return self._rpc.cancel(grpc.StatusCode.CANCELLED, _LOCAL_CANCELLATION, local=True)

    def done(self) -> bool:
        return self._rpc.final is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        bound = functools.partial(callback, self)
        if self._rpc.final is None:
            self._rpc.on_final.append(bound)
        else:
            self._rpc.loop.call_soon(bound)

    def time_remaining(self) -> float | None:
        return self._rpc.time_remaining()

    async def initial_metadata(self) -> Metadata:
        return Metadata.from_tuple(await self._rpc.initial_metadata())

    async def trailing_metadata(self) -> Metadata:
        return Metadata.from_tuple((await self._rpc.finished()).trailing)

    async def code(self) -> grpc.StatusCode:
        return (await self._rpc.finished()).code

    async def details(self) -> str:
        return (await self._rpc.finished()).details

    async def debug_error_string(self) -> str:
        return ""

    async def wait_for_connection(self) -> None:
        if self.done():
            await self._raise_for_status()

    async def _raise_for_status(self) -> None:
        final = await self._rpc.finished()
        if self._rpc.locally_cancelled:
            raise asyncio.CancelledError()
        if final.code is not grpc.StatusCode.OK:
            raise self._error(final)

    def _error(self, final: Status) -> grpc.aio.AioRpcError:
        initial = Metadata.from_tuple(self._rpc.initial or ())
        return grpc.aio.AioRpcError(
            final.code, initial, Metadata.from_tuple(final.trailing), final.details, ""
        )

    def _message(self, raw: bytes) -> Any:
        """A response as the caller reads it; past the channel's receive limit the call fails, as in grpc."""
        failure = too_large(len(raw), self._receive_limit, "Received")
        if failure is not None:
            failure = f"Stream removed (CLIENT: {failure})"
            self._rpc.cancel(grpc.StatusCode.RESOURCE_EXHAUSTED, failure, local=False)
            raise self._error(Status(grpc.StatusCode.RESOURCE_EXHAUSTED, failure, ()))
        return deserialize(raw, self._deserializer)

    def __repr__(self) -> str:
        return f"<in-process call {self._rpc.method} {self._rpc.final or 'active'}>"


class _UnaryResponse(_Call):
    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        try:
            final = await self._rpc.finished()
        except asyncio.CancelledError:  # the caller's task was cancelled: so is the call
            self.cancel()
            raise
        if final.code is grpc.StatusCode.OK and self._rpc.response is not None:
            return self._message(self._rpc.response)
        await self._raise_for_status()
        raise self._error(final)  # OK without a response: unreachable by run_handler


class _StreamResponse(_Call):
    _style: str | None = None
    _iterator: AsyncIterator[Any] | None = None

    def _use(self, style: str) -> None:
        if self._style is None:
            self._style = style
        elif self._style != style:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)

    def __aiter__(self) -> AsyncIterator[Any]:
        self._use(_ITERATOR)
        if self._iterator is None:
            self._iterator = self._responses()
        return self._iterator

    async def _responses(self) -> AsyncIterator[Any]:
        while (message := await self._read()) is not EOF:
            yield message

    async def read(self) -> Any:
        self._use(_READER_WRITER)
        return await self._read()

    async def _read(self) -> Any:
        try:
            raw = await self._rpc.responses.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        if raw is END:
            await self._raise_for_status()
            return EOF
        return self._message(raw)


class _StreamRequest(_Call):
    """Requests from an iterator (consumed by a task, as grpc.aio does) or from write()/done_writing()."""

    _poller: asyncio.Task[None] | None = None
    _rpc_send_limit = -1
    _half_closed = False
    _serializer: Callable[[Any], bytes] | None = None

    def _take_requests(self, requests: Any, serializer: Callable[[Any], bytes] | None) -> None:
        self._serializer = serializer
        if requests is not None:
            self._poller = self._rpc.loop.create_task(self._consume(requests))

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._poller is not None:
            self._poller.cancel()
        return True

    async def _consume(self, requests: Any) -> None:
        try:
            async for request in _as_async(requests):
                try:
                    await self._write(request)
                except grpc.aio.AioRpcError:
                    return
            await self._done_writing()
        except BaseException:  # an iterator that raises cancels the call, as in grpc.aio; nothing escapes
            log.debug("request iterator of %s ended the call", self._rpc.method, exc_info=True)
            self.cancel()

    async def write(self, request: Any) -> None:
        if self._poller is not None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        await self._write(request)

    async def done_writing(self) -> None:
        if self._poller is not None:
            raise grpc.aio.UsageError(_API_STYLE_ERROR)
        await self._done_writing()

    async def _write(self, request: Any) -> None:
        if self.done():
            raise asyncio.InvalidStateError("RPC already finished.")
        if self._half_closed:
            raise asyncio.InvalidStateError('RPC is half closed after calling "done_writing".')
        raw = serialize(request, self._serializer)
        failure = too_large(len(raw), self._rpc_send_limit, "Sent")
        if failure is not None:
            self._rpc.cancel(grpc.StatusCode.RESOURCE_EXHAUSTED, failure, local=False)
        else:
            try:
                if await self._rpc.requests.put(raw):
                    return
            except asyncio.CancelledError:
                self.cancel()
                raise
        await self._raise_for_status()
        raise asyncio.InvalidStateError("RPC already finished.")

    async def _done_writing(self) -> None:
        if not self.done() and not self._half_closed:
            self._half_closed = True
            self._rpc.requests.close()


async def _as_async(requests: Any) -> AsyncIterator[Any]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request
    else:
        for request in requests:
            yield request


class UnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall):
    def __init__(self, channel: Any, method: str, request: Any, timeout: float | None, metadata: Any,
                 serializer: Any, deserializer: Any) -> None:  # fmt: skip
        super().__init__(channel, method, serialize(request, serializer), timeout, metadata, deserializer)


class UnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall):
    def __init__(self, channel: Any, method: str, request: Any, timeout: float | None, metadata: Any,
                 serializer: Any, deserializer: Any) -> None:  # fmt: skip
        super().__init__(channel, method, serialize(request, serializer), timeout, metadata, deserializer)


class StreamUnaryCall(_StreamRequest, _UnaryResponse, grpc.aio.StreamUnaryCall):
    def __init__(self, channel: Any, method: str, requests: Any, timeout: float | None, metadata: Any,
                 serializer: Any, deserializer: Any) -> None:  # fmt: skip
        super().__init__(channel, method, None, timeout, metadata, deserializer)
        self._rpc_send_limit = channel.limits.send
        self._take_requests(requests, serializer)


class StreamStreamCall(_StreamRequest, _StreamResponse, grpc.aio.StreamStreamCall):
    def __init__(self, channel: Any, method: str, requests: Any, timeout: float | None, metadata: Any,
                 serializer: Any, deserializer: Any) -> None:  # fmt: skip
        super().__init__(channel, method, None, timeout, metadata, deserializer)
        self._rpc_send_limit = channel.limits.send
        self._take_requests(requests, serializer)


RequestCall = UnaryUnaryCall | UnaryStreamCall | StreamUnaryCall | StreamStreamCall
