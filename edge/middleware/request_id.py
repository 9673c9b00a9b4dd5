"""Request ids: every answer, errors included, carries one."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge.middleware.headers import header

HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _new_id() -> bytes:
    # 128 random bits as 32 hex digits, like uuid4().hex but without building a UUID object (cheaper).
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
