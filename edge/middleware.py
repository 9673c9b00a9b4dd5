"""Pure ASGI middleware for the edge: request id, body limit, content type.

Plain ASGI classes, not Starlette's BaseHTTPMiddleware: that one runs the app in a task group and streams the
response through memory object streams, which costs more than everything here together.

Order, outermost first (edge/app.py wires it): RequestId (every answer, errors included, carries the id),
BodyLimit (before anything reads a body), ContentType, RateLimit (edge/ratelimit.py), Waf (edge/waf.py; reads
and replays the body), app.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.errors import request_id_of, send_error
from services.core.errors import Code

HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (`name` lower-case), None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _new_id() -> bytes:
    # 128 random bits as 32 hex digits, like uuid4().hex but without building a UUID object (4x cheaper).
    return os.urandom(16).hex().encode()


def _with_request_id(
    headers: Iterable[tuple[bytes, bytes]] | None, value: bytes
) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers or () if k.lower() != HEADER] + [(HEADER, value)]


class RequestIdMiddleware:
    """Takes a sane client `x-request-id` or creates one; stores it in scope["state"] and echoes it.

    Downstream code reads the id with `edge.errors.request_id_of(scope)` (or `request.state.request_id`), never
    from the raw header, which may have been replaced.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client_id = header(scope, HEADER)
        rid = client_id if client_id and _SANE_ID.fullmatch(client_id) else _new_id()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid.decode("ascii")

        async def send_with_id(message: Message) -> None:
            # websocket.accept and the denial-response extension carry headers too.
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                message["headers"] = _with_request_id(message.get("headers"), rid)
            await send(message)

        await self.app(scope, receive, send_with_id)


class _BodyTooLarge(Exception):
    """Raised from the wrapped receive when the body crosses the limit; BodyLimitMiddleware answers 413."""


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`, decided without reading the whole body.

    With Content-Length the request is refused before a byte is read. Without it (chunked), the bytes are
    counted as the app reads them; crossing the limit raises inside the app's receive, and whatever the app
    does with that (FastAPI turns it into a 400, a handler might swallow it) is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header(scope, b"content-length")
        if length is not None and header(scope, b"transfer-encoding") is None:
            await self._declared(scope, receive, send, length)
        else:
            await self._counted(scope, receive, send)

    async def _declared(self, scope: Scope, receive: Receive, send: Send, length: bytes) -> None:
        # The server (h11/httptools) enforces the declared length, so no counting is needed below it.
        if not length.isdigit():
            await send_error(send, Code.INVALID_ARGUMENT, "invalid Content-Length", request_id_of(scope))
        elif int(length) > self.max_bytes:
            await self._refuse(scope, send)
        else:
            await self.app(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, too_large
            if too_large:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's own answer to the aborted read; the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise  # a response is already on the wire: the server aborts the connection
        if too_large and not started:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        await send_error(
            send,
            Code.INVALID_ARGUMENT,
            f"request body larger than {self.max_bytes} bytes",
            request_id_of(scope),
            http_status=413,
            headers={"connection": "close"},
        )


def media_type(value: bytes | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if value is None:
        return ""
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    if header(scope, b"transfer-encoding") is not None:
        return True
    return length is not None and length.strip() not in (b"", b"0")


class ContentTypeMiddleware:
    """415 unless a POST/PUT/PATCH body is `application/json` (parameters such as charset allowed).

    `exempt_prefixes`: path prefixes that stream raw bytes (the embedded storage upload route).
    """

    def __init__(self, app: ASGIApp, exempt_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.exempt_prefixes = tuple(exempt_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _BODY_METHODS
            and has_body(scope)
            and media_type(header(scope, b"content-type")) != "application/json"
            and not scope["path"].startswith(self.exempt_prefixes)
        ):
            await send_error(
                send,
                Code.INVALID_ARGUMENT,
                "request body must be application/json",
                request_id_of(scope),
                http_status=415,
            )
            return
        await self.app(scope, receive, send)
