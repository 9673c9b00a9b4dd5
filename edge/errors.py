"""The one gRPC-status -> HTTP table and the JSON error body every edge response uses.

Body: `{"code": <grpc code number>, "message": str, "details": [...], "request_id": str}`. No stack trace or
exception text that the caller did not produce ever goes into `message`.

HTTP-only answers (413 body too large, 415 wrong content type) keep their exact HTTP status through the
`http_status` override and carry INVALID_ARGUMENT in the body: the request is wrong whatever the server's
state, and retrying it unchanged cannot help. RESOURCE_EXHAUSTED would read as "429, retry later" to a client
that maps body codes through this table, which is wrong for an oversized body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from services.core.errors import Code

# grpc-gateway's table (runtime/errors.go HTTPStatusFromCode).
HTTP_STATUS: dict[int, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

JSON = "application/json"


def status_for(code: int) -> int:
    """HTTP status for a gRPC code number; an unknown number is a 500 (as grpc-gateway does)."""
    return HTTP_STATUS.get(code, 500)


def request_id_of(scope: Scope) -> str:
    """The request id RequestIdMiddleware stored in the scope ("" when it did not run)."""
    state = scope.get("state")
    return str(state.get("request_id", "")) if isinstance(state, dict) else ""


def error_body(code: Code, message: str, request_id: str, details: list[Any] | None = None) -> bytes:
    return orjson.dumps(
        {"code": int(code), "message": message, "details": details or [], "request_id": request_id}
    )


def error_response(
    code: Code,
    message: str,
    request_id: str,
    details: list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    http_status: int | None = None,
) -> Response:
    return Response(
        error_body(code, message, request_id, details),
        status_code=http_status or status_for(code),
        headers=dict(headers) if headers else None,
        media_type=JSON,
    )


async def send_error(
    send: Send,
    code: Code,
    message: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
    http_status: int | None = None,
    details: list[Any] | None = None,
) -> None:
    """Answers an HTTP request from ASGI middleware, before (or instead of) the app."""
    body = error_body(code, message, request_id, details)
    raw_headers = [
        (b"content-type", JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send(
        {"type": "http.response.start", "status": http_status or status_for(code), "headers": raw_headers}
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ResponseTracker:
    """Wraps an ASGI send and remembers whether the response started: an error answer is only possible before."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)
