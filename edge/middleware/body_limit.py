"""413 for bodies over the limit, decided without reading the whole body; routes whose edge rule says
`upload_body` get the upload limit instead of the API limit."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.errors import request_id_of, send_error
from edge.middleware.headers import header
from edge.transcoding.rules import rule_of
from services.core.errors import Code


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


class BodyLimits:
    """BodyLimitMiddleware with the upload limit on `upload_body` routes (the route's rule in the scope,
    rules.rule_of) and the API limit everywhere else."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int) -> None:
        self.api = BodyLimitMiddleware(app, max_bytes)
        self.uploads = BodyLimitMiddleware(app, upload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if rule_of(scope).upload_body:
            await self.uploads(scope, receive, send)
        else:
            await self.api(scope, receive, send)
