"""The server half of the in-process channel: one call's state, its bounded pipes, the servicer context.

Every message crosses as bytes (the caller's serializer, then the handler's deserializer), so caller and
servicer never share a mutable message and wire compatibility is exercised on every call. Handlers run the
way grpc.aio's server runs them: one task per RPC in a fresh contextvars context, AbortError ends the call
with the status it set, any other exception is UNKNOWN "Unexpected ...", cancellation is silent.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc

log = logging.getLogger("launchpad.inproc")
Metadata = tuple[tuple[str, str | bytes], ...]
EOF = grpc.aio.EOF
PEER = "inproc"
END = object()  # a pipe's end of stream


class Status(NamedTuple):
    code: grpc.StatusCode
    details: str
    trailing: Metadata


class Pipe:
    """A bounded one-way queue of messages: put waits while it is full (backpressure), get waits while it is
    empty; close ends it after what it holds, abort drops what it holds."""

    __slots__ = ("_closed", "_items", "_readable", "_size", "_writable")

    def __init__(self, size: int) -> None:
        self._items: deque[bytes] = deque()
        self._size, self._closed = size, False
        self._readable, self._writable = asyncio.Event(), asyncio.Event()

    async def put(self, item: bytes) -> bool:
        """False when the pipe is closed (the other side is gone)."""
        while len(self._items) >= self._size and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        if self._closed:
            return False
        self._items.append(item)
        self._readable.set()
        return True

    async def get(self) -> Any:
        """The next message, or END."""
        while not self._items:
            if self._closed:
                return END
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        self._writable.set()
        return item

    def close(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()

    def abort(self) -> None:
        self._items.clear()
        self.close()


class Rpc:
    """One call, shared by the caller's call object and the servicer's context. `final` is set once."""

    def __init__(self, method: str, metadata: Metadata, timeout: float | None, window: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.method, self.metadata = method, metadata
        self.deadline = None if timeout is None else self.loop.time() + timeout
        self.requests, self.responses = Pipe(window), Pipe(window)
        self.response: bytes | None = None  # a unary response, set before an OK final
        self.initial: Metadata | None = None
        self.final: Status | None = None
        self.cancelled = self.locally_cancelled = False
        self.task: asyncio.Task[None] | None = None
        self.on_final: list[Callable[[], None]] = []
        self._finished = asyncio.Event()
        self._initial_sent: asyncio.Event | None = None
        self._timer = None if timeout is None else self.loop.call_later(timeout, self._expire)

    def start(self, serve: Callable[[Rpc], Any]) -> None:
        """Runs the server side in its own task, in a fresh context: caller's context variables (the kit's
        call context, for one) never leak into the servicer, nor the servicer's back."""
        self.task = self.loop.create_task(serve(self), context=contextvars.Context())

    def send_initial(self, metadata: Metadata) -> None:
        if self.initial is None:
            self.initial = metadata
            if self._initial_sent is not None:
                self._initial_sent.set()

    async def initial_metadata(self) -> Metadata:
        if self.initial is None:
            if self._initial_sent is None:
                self._initial_sent = asyncio.Event()
            await self._initial_sent.wait()
        return self.initial or ()

    async def finished(self) -> Status:
        if self.final is None:
            await self._finished.wait()
        assert self.final is not None
        return self.final

    def finish(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> bool:
        """Ends the call with this status unless it already ended; messages in flight still reach the caller."""
        if self.final is not None:
            return False
        self.final = Status(code, details, tuple(trailing))
        self.send_initial(())
        self.responses.close()
        self.requests.abort()
        if self._timer is not None:
            self._timer.cancel()
        self._finished.set()
        for callback in self.on_final:
            self.loop.call_soon(callback)
        return True

    def cancel(self, code: grpc.StatusCode, details: str, *, local: bool) -> bool:
        """Ends the call from the caller's side (cancel, deadline, channel or server closed)."""
        if not self.finish(code, details):
            return False
        self.cancelled, self.locally_cancelled = True, local
        self.responses.abort()
        if self.task is not None:
            self.task.cancel()
        return True

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - self.loop.time(), 0.0)

    def _expire(self) -> None:
        self.cancel(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", local=False)


class Limits(NamedTuple):
    """Message size limits of one side, as the grpc.max_*_message_length options set them (-1: none)."""

    receive: int
    send: int

    @classmethod
    def of(cls, options: Sequence[tuple[str, Any]], receive: int, send: int) -> Limits:
        values = dict(options)
        return cls(
            int(values.get("grpc.max_receive_message_length", receive)),
            int(values.get("grpc.max_send_message_length", send)),
        )


def too_large(size: int, limit: int, verb: str) -> str | None:
    """grpc core's words when a message exceeds a limit, else None."""
    return None if limit < 0 or size <= limit else f"{verb} message larger than max ({size} vs. {limit})"


def serialize(message: Any, serializer: Callable[[Any], bytes] | None) -> bytes:
    return message if serializer is None else serializer(message)


def deserialize(raw: bytes, deserializer: Callable[[bytes], Any] | None) -> Any:
    return raw if deserializer is None else deserializer(raw)


class _Terminated(Exception):
    """The handler went on after the call had ended (it suppressed an AbortError, or it already finished)."""


class ServicerContext(grpc.aio.ServicerContext):
    """What a handler (and the kit interceptor) sees of an in-process call, as grpc.aio's context."""

    def __init__(self, rpc: Rpc, handler: grpc.RpcMethodHandler, limits: Limits) -> None:
        self._rpc, self._limits = rpc, limits
        self._deserializer = handler.request_deserializer
        self._serializer = handler.response_serializer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Metadata = ()
        self._abort: grpc.aio.AbortError | None = None
        self._callbacks: list[Callable[[], None]] = []

    def check(self) -> None:
        if self._abort is not None:
            raise self._abort
        if self._rpc.final is not None:
            raise _Terminated("RPC already finished.")

    def status(self) -> Status:
        return Status(self._code or grpc.StatusCode.OK, self._details, self._trailing)

    def message(self, raw: bytes) -> Any:
        """A request as the handler reads it, or RESOURCE_EXHAUSTED past the server's receive limit."""
        failure = too_large(len(raw), self._limits.receive, "Received")
        if failure is not None:
            self._rpc.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, f"SERVER: {failure}")
            raise _Terminated(failure)
        return deserialize(raw, self._deserializer)

    def encode(self, message: Any) -> bytes:
        raw = serialize(message, self._serializer)
        failure = too_large(len(raw), self._limits.send, "Sent")
        if failure is not None:
            self._rpc.finish(grpc.StatusCode.RESOURCE_EXHAUSTED, failure)
            raise _Terminated(failure)
        return raw

    async def read(self) -> Any:
        self.check()
        raw = await self._rpc.requests.get()
        self.check()
        return EOF if raw is END else self.message(raw)

    async def write(self, message: Any) -> None:
        self.check()
        self._rpc.send_initial(())
        if not await self._rpc.responses.put(self.encode(message)):
            self.check()

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        self.check()
        if self._rpc.initial is not None:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self._rpc.send_initial(tuple(initial_metadata))

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> Any:
        if self._abort is not None:
            raise grpc.aio.UsageError("Abort already called!")
        self._abort = grpc.aio.AbortError("Locally aborted.")
        trailing_metadata = tuple(trailing_metadata) or self._trailing
        self._trailing, self._code = trailing_metadata, code
        self._details = details or self._details
        self._rpc.finish(code, self._details, trailing_metadata)
        raise self._abort

    async def abort_with_status(self, status: grpc.Status) -> Any:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def invocation_metadata(self) -> Metadata:
        return self._rpc.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:  # None until set, as in grpc.aio: the kit relies on it
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_compression(self, compression: grpc.Compression) -> None:
        """Nothing is compressed in-process."""

    def disable_next_message_compression(self) -> None:
        """Nothing is compressed in-process."""

    def peer(self) -> str:
        return PEER

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def time_remaining(self) -> float | None:
        return self._rpc.time_remaining()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(functools.partial(callback, self))

    def done(self) -> bool:
        return self._rpc.final is not None

    def cancelled(self) -> bool:
        return self._rpc.cancelled

    def run_callbacks(self) -> None:
        for callback in self._callbacks:
            try:
                callback()
            except Exception:
                log.exception("error in a done callback of %s", self._rpc.method)


class _Requests:
    """The request stream a streaming handler iterates (grpc.aio's _MessageReceiver)."""

    def __init__(self, context: ServicerContext) -> None:
        self._context = context
        self._agen: AsyncIterator[Any] | None = None

    async def _receive(self) -> AsyncIterator[Any]:
        while (message := await self._context.read()) is not EOF:
            yield message

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._agen is None:
            self._agen = self._receive()
        return self._agen

    async def __anext__(self) -> Any:
        return await self.__aiter__().__anext__()


async def run_handler(rpc: Rpc, handler: grpc.RpcMethodHandler, limits: Limits, request: Any) -> None:
    """Runs a resolved handler to its end and sets the call's status, as grpc.aio's server does."""
    context = ServicerContext(rpc, handler, limits)
    try:
        try:
            await _invoke(rpc, handler, context, request)
        except grpc.aio.AbortError:
            return
        except _Terminated:
            return
    except asyncio.CancelledError:
        rpc.finish(grpc.StatusCode.CANCELLED, "Cancelled")
    except Exception as exc:
        log.exception("Unexpected [%s] raised by servicer method [%s]", type(exc).__name__, rpc.method)
        code = context.code()
        code = grpc.StatusCode.UNKNOWN if code in (None, grpc.StatusCode.OK) else code
        rpc.finish(code, f"Unexpected {type(exc)}: {exc}", context.trailing_metadata())
    finally:
        context.run_callbacks()


async def _invoke(rpc: Rpc, handler: grpc.RpcMethodHandler, context: ServicerContext, raw: Any) -> None:
    request = _Requests(context) if handler.request_streaming else context.message(raw)
    if not handler.response_streaming:
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
        response = await _awaitable(behavior(request, context))
        context.check()
        status = context.status()
        if status.code is grpc.StatusCode.OK:
            rpc.response = context.encode(response)
        rpc.finish(*status)
        return
    behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
    result = behavior(request, context)
    if inspect.isawaitable(result):  # the reader/writer style: the handler writes, returns None
        await result
    else:
        async for response in _async_iterator(result):
            context.check()
            await context.write(response)
    context.check()
    rpc.finish(*context.status())


def _awaitable(result: Any) -> Any:
    """Synchronous handlers would need grpc.aio's thread pool: every servicer here is async."""
    if not inspect.isawaitable(result):
        raise TypeError(f"in-process calls need async handlers, got {type(result).__name__}")
    return result


def _async_iterator(result: Any) -> AsyncIterator[Any]:
    if not hasattr(result, "__aiter__"):
        raise TypeError(f"in-process streams need async generators, got {type(result).__name__}")
    return result
