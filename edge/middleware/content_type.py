"""415 unless a request body is JSON, except on routes whose edge rule says `raw_body`."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from edge.errors import request_id_of, send_error
from edge.middleware.headers import has_body, header, media_type
from edge.transcoding.rules import rule_of
from services.core.errors import Code

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ContentTypeMiddleware:
    """415 unless a POST/PUT/PATCH body is `application/json` (parameters such as charset allowed).

    Routes whose rule (in the scope, rules.rule_of) says `raw_body` stream raw bytes (the object store's
    uploads).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _BODY_METHODS
            and has_body(scope)
            and media_type(header(scope, b"content-type")) != "application/json"
            and not rule_of(scope).raw_body
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
