"""WebSocket <-> streaming RPC, for every method with the (launchpad.api.v1.websocket) option.

- Bidi streams: each client text (or binary) frame is one JSON request message, each response message one
  text frame.
- Server streams: the request comes from the query parameters; a client frame replaces it (query parameters
  plus the frame's fields) and restarts the stream -- so a client may also send its request as the first frame,
  or change a filter without reconnecting.
- Auth: the JWT from the `token` query parameter (browsers cannot set headers on a WebSocket) or the
  Authorization header, verified before any frame is read; failure -> close 1008.
- Error frames are the edge's (errors.socket_error_text): {"type": "error", "error": {"code": <name>,
  "message", "details"?}}, no topic; details are there when the error has any (a frame that is not valid JSON
  for the request message names the field: [{"field", "description"}]).
- A frame that is not valid JSON for the request message gets an error frame; the stream goes on.
- Backend errors: an error frame, then a close code that says what to do (1008 the request or the caller is
  refused, 1013 try again later, 1011 internal).
- Nothing is buffered without bound: the bridge reads the next frame only after the previous one was written
  to the call (gRPC flow control), and reads the next response only after the previous frame was sent.
- The client going away cancels the RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import grpc
import orjson
from prometheus_client import Gauge
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edge import codec
from edge.clients import call_metadata, client_ip
from edge.errors import (
    NORMAL,
    ApiError,
    api_error,
    close_code,
    close_reason,
    request_id_of,
    socket_error_text,
)
from edge.transcoding.context import EdgeContext
from edge.transcoding.specs import WebSocketSpec
from services.core.context import Principal
from services.core.errors import ServiceError

OPEN_SOCKETS = Gauge("launchpad_edge_websockets_open", "Open WebSocket bridges", ["path"])


class Disconnected(Exception):
    """The client closed the socket."""


class Session:
    """One accepted socket: serialized sends, frame decoding, closing once."""

    def __init__(self, ws: WebSocket, request_cls: Any, decode: Any, encode: Any) -> None:
        self.ws = ws
        self.request_cls = request_cls
        self.decode = decode
        self.encode = encode
        self._send_lock = asyncio.Lock()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, OSError, RuntimeError):
                raise Disconnected from None  # the client went away while we were sending

    async def send_response(self, response: Any) -> None:
        await self.send(orjson.dumps(self.encode(response)).decode())

    async def next_request(self, base: Any = None) -> Any:
        """The next client frame as a request message (merged onto `base`); bad frames get an error frame."""
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise Disconnected
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            request = self.request_cls()
            if base is not None:
                request.CopyFrom(base)
            try:
                self.decode(request, codec.parse_json(raw), "")
            except codec.CodecError as exc:
                await self.send(socket_error_text(api_error(exc, "")))
                continue
            return request

    async def fail_with(self, error: ApiError) -> None:
        """The error frame, then the close code that says what to do."""
        with contextlib.suppress(Exception):  # the client may already be gone
            await self.send(socket_error_text(error))
        await self.close(close_code(error.code), error.message)

    async def close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code, close_reason(reason))


class WebSocketBridge:
    """The ASGI app behind one WebSocket route."""

    def __init__(self, spec: WebSocketSpec, ctx: EdgeContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.metrics_label = spec.path
        method = spec.method
        self.request_cls = codec.message_class(method.input_type)
        self.decode = codec.decoder(method.input_type)
        self.encode = codec.encoder(method.output_type)
        self.bidi = method.client_streaming
        leaves = codec.text_leaves(method.input_type) if not self.bidi else {}
        self.query_setters = {name: codec.text_setter(path) for name, path in leaves.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ws = WebSocket(scope, receive, send)
        session = Session(ws, self.request_cls, self.decode, self.encode)
        request_id = request_id_of(scope) or uuid.uuid4().hex
        try:
            metadata = await self._metadata(ws, request_id)
            first = None if self.bidi else self._query_request(ws)
        except (ServiceError, codec.CodecError) as exc:  # refused before any frame is read (close 1008)
            await ws.accept()
            await session.fail_with(api_error(exc, request_id))
            return
        await ws.accept()
        gauge = OPEN_SOCKETS.labels(self.spec.path)
        gauge.inc()
        try:
            await self._serve(session, metadata, first, request_id)
        finally:
            gauge.dec()

    async def _metadata(self, ws: WebSocket, request_id: str) -> tuple[tuple[str, str], ...]:
        if self.spec.policy.public:
            return call_metadata(request_id, None, None, client_ip(ws.scope))
        principal, verified = await authenticate_socket(self.ctx, ws)
        return call_metadata(request_id, principal, verified, client_ip(ws.scope))

    def _query_request(self, ws: WebSocket) -> Any:
        request = self.request_cls()
        for name in ws.query_params:
            setter = self.query_setters.get(name)
            if setter is not None:  # `token` and unknown parameters are not request fields
                setter(request, ws.query_params.getlist(name))
        return request

    async def _serve(self, session: Session, metadata: Any, first: Any, request_id: str) -> None:
        stub = self.ctx.multicallable(self.spec.service, self.spec.method)
        try:
            if self.bidi:
                await self._bidi(session, stub(metadata=metadata, timeout=self.spec.timeout_s))
            else:
                await self._server_stream(session, stub, metadata, first)
        except Disconnected:
            return
        except Exception as exc:
            await session.fail_with(api_error(exc, request_id, self.spec.service, "a websocket bridge"))
        else:
            await session.close(NORMAL, "stream ended")

    async def _bidi(self, session: Session, call: Any) -> None:
        downstream = asyncio.ensure_future(self._pump(session, call))
        upstream = asyncio.ensure_future(self._feed(session, call))
        try:
            await asyncio.wait({downstream, upstream}, return_when=asyncio.FIRST_COMPLETED)
            if upstream.done() and upstream.exception() is not None:
                raise upstream.exception()  # the client left: the finally cancels the call
            await downstream  # the call ended (or refused a write): its status decides the close
        finally:
            await _stop(call, downstream, upstream)

    async def _feed(self, session: Session, call: Any) -> None:
        while True:
            request = await session.next_request()
            try:
                await call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                return  # the call is over; the response side reports how it ended

    async def _pump(self, session: Session, call: Any) -> None:
        async for response in call:
            await session.send_response(response)

    async def _server_stream(self, session: Session, stub: Any, metadata: Any, request: Any) -> None:
        base = request
        while True:
            call = stub(request, metadata=metadata, timeout=self.spec.timeout_s)
            downstream = asyncio.ensure_future(self._pump(session, call))
            upstream = asyncio.ensure_future(session.next_request(base))
            try:
                await asyncio.wait({downstream, upstream}, return_when=asyncio.FIRST_COMPLETED)
                if not upstream.done():
                    await downstream  # the stream ended (OK or error) before the client sent anything
                    return
                request = upstream.result()  # a new request (raises Disconnected when the client left)
            finally:
                await _stop(call, downstream, upstream)


async def _stop(call: Any, *tasks: asyncio.Future[Any]) -> None:
    """Cancels the RPC and both pumps, and waits until they are gone."""
    call.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def authenticate_socket(ctx: EdgeContext, ws: WebSocket) -> tuple[Principal, str]:
    """The socket's verified principal and token: the `token` query parameter (browsers cannot set headers on
    a WebSocket), else the Authorization header. Raises ServiceError (UNAUTHENTICATED) when refused."""
    token = ws.query_params.get("token")
    authorization = f"Bearer {token}" if token else ws.headers.get("authorization")
    return await ctx.authenticate(authorization)
