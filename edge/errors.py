"""The edge's one error writer: exception -> ApiError -> HTTP answer or WebSocket error frame and close code.

Every failure the edge reports goes through `api_error` (the one exception -> code mapping) and is rendered
from the ApiError it returns, so an error reads the same over REST and over a socket:
- HTTP body: `{"code": <grpc code number>, "message": str, "details": [...], "request_id": str}`, the status
  from grpc-gateway's table (runtime/errors.go HTTPStatusFromCode).
- WebSocket: the text frame `{"type": "error", "error": {"code": <name>, "message", "details"?}}`
  (socket_error_text), then a close code that says what to do (1008 the request or the caller is refused, 1013
  try again later, 1011 internal). The realtime protocol's own error frame (services/realtime/protocol.py
  error_frame: a topic, no details) answers a refused realtime frame; edge/fanout.py lists both.
No stack trace or exception text that the caller did not produce ever goes into `message`: UNKNOWN, INTERNAL
and DATA_LOSS, whoever raised them, are logged and answered with the request id only.

HTTP-only answers (413 body too large, 415 wrong content type) keep their exact HTTP status through the
`http_status` override and carry INVALID_ARGUMENT in the body: the request is wrong whatever the server's
state, and retrying it unchanged cannot help. RESOURCE_EXHAUSTED would read as "429, retry later" to a client
that maps body codes through this table, which is wrong for an oversized body.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from edge.codec import CodecError
from services.core.errors import Code, ServiceError
from services.core.interceptors import DETAILS_KEY

log = logging.getLogger("launchpad.edge")

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

NORMAL, GOING_AWAY, POLICY, INTERNAL, TRY_AGAIN = 1000, 1001, 1008, 1011, 1013
_CLOSE_CODES = {
    Code.OK: NORMAL,
    Code.CANCELLED: GOING_AWAY,
    Code.INVALID_ARGUMENT: POLICY,
    Code.NOT_FOUND: POLICY,
    Code.ALREADY_EXISTS: POLICY,
    Code.PERMISSION_DENIED: POLICY,
    Code.FAILED_PRECONDITION: POLICY,
    Code.OUT_OF_RANGE: POLICY,
    Code.UNAUTHENTICATED: POLICY,
    Code.RESOURCE_EXHAUSTED: TRY_AGAIN,
    Code.ABORTED: TRY_AGAIN,
    Code.DEADLINE_EXCEEDED: TRY_AGAIN,
    Code.UNAVAILABLE: TRY_AGAIN,
}

_JSON = b"application/json"
_AUTH_SCHEME = b'Bearer realm="launchpad"'


def status_for(code: int) -> int:
    """HTTP status for a gRPC code number; an unknown number is a 500 (as grpc-gateway does)."""
    return HTTP_STATUS.get(code, 500)


def close_code(code: Code) -> int:
    """The WebSocket close code for a gRPC code (1011 for anything not listed)."""
    return _CLOSE_CODES.get(code, INTERNAL)


def request_id_of(scope: Scope) -> str:
    """The request id RequestIdMiddleware stored in the scope ("" when it did not run)."""
    state = scope.get("state")
    return str(state.get("request_id", "")) if isinstance(state, dict) else ""


def internal_message(request_id: str) -> str:
    """What a client is told about a failure it did not cause: only the id to quote when reporting it."""
    return f"internal error (request id {request_id})"


@dataclass(frozen=True, slots=True)
class ApiError:
    """What a client is told, in the one shape every renderer below takes: details are a list of objects."""

    code: Code
    message: str
    details: list[Any] = field(default_factory=list)
    http_status: int | None = None  # an HTTP-only answer's own status (the router's 404/405)
    headers: Mapping[str, str] | None = None


# ------------------------------------------------------------------------------------ backend calls

BACKEND_ERRORS = Counter(
    "launchpad_edge_backend_errors_total",
    "Backend calls that failed, by service and gRPC code",
    ["service", "code"],
)
# The channel's own failures (backend down, connection lost), as opposed to an UNAVAILABLE a service chose.
# Matched at the start only: gRPC's own messages begin so, while a service's UNAVAILABLE names its dependency
# first and may quote a driver further on ("PostgreSQL is not available: ... Connection refused").
_TRANSPORT_FAILURE = re.compile(
    r"failed to connect|connection refused|connections to all backends failing|socket closed|"
    r"connection reset|dns resolution failed|broken pipe|end of tcp stream|stream removed",
    re.IGNORECASE,
)
_INTERNAL_CODES = frozenset({Code.UNKNOWN, Code.INTERNAL, Code.DATA_LOSS})
# The router's own answers (Starlette's HTTPException), in body codes.
_HTTP_CODES = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}
_HTTP_CODES |= {404: Code.NOT_FOUND, 405: Code.UNIMPLEMENTED, 413: Code.INVALID_ARGUMENT}


def describe_rpc_error(exc: grpc.aio.AioRpcError, service: str) -> ApiError:
    """The client-safe description of a failed backend call.

    Messages of client errors come from the service verbatim; transport failures name the service instead of
    echoing addresses; internal errors never repeat what the backend said (it may describe its internals).
    """
    code = Code(exc.code().value[0])
    message = exc.details() or code.name
    BACKEND_ERRORS.labels(service, code.name).inc()
    if code == Code.UNAVAILABLE and _TRANSPORT_FAILURE.match(message):
        log.warning("edge: %s service unreachable: %s", service, message)
        message = f"the {service} service is unavailable (cannot connect)"
    elif code == Code.DEADLINE_EXCEEDED and message == "Deadline Exceeded":
        message = f"the {service} service did not answer before the deadline"
    elif code in _INTERNAL_CODES:
        log.error("edge: %s service failed with %s: %s", service, code.name, message)
        message = f"internal error in the {service} service"
    return ApiError(code, message, _trailer_details(exc))


def _trailer_details(exc: grpc.aio.AioRpcError) -> list[Any]:
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY:
            try:
                details = orjson.loads(value)
            except orjson.JSONDecodeError:
                log.warning("edge: malformed %s trailer ignored", DETAILS_KEY)
                return []
            return details if isinstance(details, list) else [details]
    return []


class DescribedError(ServiceError):
    """A failure already described (logged, counted) for the client, carried as a ServiceError through code
    that expects one; `error` is what the client is told, and api_error answers with it as it is.

    ServiceError's own `details` (a dict) stays empty: the details are `error.details`, the list every
    renderer takes. The realtime protocol's error frame has no details field (FrameError: code and message),
    so a refusal sent in that frame shows only its code and message.
    """

    def __init__(self, error: ApiError) -> None:
        self.error = error
        super().__init__(error.message, code=error.code)


class BackendCallFailed(DescribedError):
    """A backend call failed while the edge served a request, described with the service that failed."""

    def __init__(self, exc: grpc.aio.AioRpcError, service: str) -> None:
        super().__init__(describe_rpc_error(exc, service))


# ---------------------------------------------------------------------------------------- mapping


def api_error(exc: BaseException, request_id: str, service: str = "", where: str = "") -> ApiError:
    """The one exception -> ApiError mapping. Anything not meant for the client is logged (with `where`, the
    failing part) and becomes INTERNAL naming only the request id.

    `service` is required with a grpc.aio.AioRpcError (the backend that failed, for the message, the log and
    launchpad_edge_backend_errors_total). Without it the failure is a bug of the caller: logged as one and
    answered INTERNAL, never counted or described under an empty service name.
    """
    if isinstance(exc, grpc.aio.AioRpcError) and service:
        return describe_rpc_error(exc, service)
    if isinstance(exc, DescribedError):
        return exc.error
    if isinstance(exc, ServiceError):
        return _service_error(exc, request_id)
    if isinstance(exc, CodecError):
        details = [{"field": exc.field, "description": exc.description}]
        return ApiError(Code.INVALID_ARGUMENT, str(exc), details)
    if isinstance(exc, HTTPException):
        code = _HTTP_CODES.get(exc.status_code, Code.UNKNOWN)
        return ApiError(code, str(exc.detail), http_status=exc.status_code, headers=exc.headers)
    if isinstance(exc, grpc.aio.AioRpcError):
        where = f"{where or 'edge'}, a failed backend call without its service"
    log.error("edge: unexpected error in %s", where or "edge", exc_info=exc, extra={"request_id": request_id})
    return ApiError(Code.INTERNAL, internal_message(request_id))


def _service_error(exc: ServiceError, request_id: str) -> ApiError:
    if exc.code in _INTERNAL_CODES:  # the same rule as a backend's: its text may describe internals
        log.error("edge: %s: %s", exc.code.name, exc.message, extra={"request_id": request_id})
        return ApiError(exc.code, internal_message(request_id))
    return ApiError(exc.code, exc.message, [exc.details] if exc.details else [])


# ------------------------------------------------------------------------------------------- HTTP


def error_body(code: Code, message: str, request_id: str, details: list[Any] | None = None) -> bytes:
    return orjson.dumps(
        {"code": int(code), "message": message, "details": details or [], "request_id": request_id}
    )


Headers = list[tuple[bytes, bytes]]


def http_parts(error: ApiError, request_id: str) -> tuple[bytes, int, Headers]:
    """(body, status, headers) of an error answer, whoever sends it: JSON; a 401 names the auth scheme; a 429
    carries a `retry_after_s` detail (e.g. failed-login limits) as Retry-After; headers the error brings (the
    router's Allow, the rate limiter's Retry-After) win over these defaults."""
    given = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (error.headers or {}).items()]
    names = {name for name, _ in given}
    headers: Headers = [(b"content-type", _JSON)]
    if error.code == Code.UNAUTHENTICATED and b"www-authenticate" not in names:
        headers.append((b"www-authenticate", _AUTH_SCHEME))
    if error.code == Code.RESOURCE_EXHAUSTED and b"retry-after" not in names:
        headers += _retry_after(error.details)
    body = error_body(error.code, error.message, request_id, error.details)
    return body, error.http_status or status_for(error.code), [*headers, *given]


def _retry_after(details: list[Any]) -> Headers:
    for detail in details:
        wait = detail.get("retry_after_s") if isinstance(detail, dict) else None
        if isinstance(wait, int | float):
            return [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
    return []


def api_response(error: ApiError, request_id: str) -> Response:
    """The error as a Starlette Response (for exception handlers)."""
    body, status, headers = http_parts(error, request_id)
    return Response(body, status, {k.decode("latin-1"): v.decode("latin-1") for k, v in headers})


async def send_api_error(send: Send, error: ApiError, request_id: str) -> None:
    """Answers an HTTP request over raw ASGI, from middleware or an endpoint, before any response started."""
    body, status, headers = http_parts(error, request_id)
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send,
    code: Code,
    message: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
    http_status: int | None = None,
    details: list[Any] | None = None,
) -> None:
    """send_api_error for an answer the middleware writes itself (413, 415, 403 from the WAF, 429)."""
    error = ApiError(code, message, details or [], http_status=http_status, headers=headers)
    await send_api_error(send, error, request_id)


_ANSWERED = "launchpad.answered_error"


def answered(scope: Scope, exc: BaseException) -> None:
    """Records that `exc` was answered (and logged) for this request, for a layer that sees it again."""
    scope[_ANSWERED] = exc


def was_answered(scope: Scope, exc: BaseException) -> bool:
    return scope.get(_ANSWERED) is exc


class ResponseTracker:
    """Wraps an ASGI send and remembers whether the response started (an error answer is only possible
    before)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


# -------------------------------------------------------------------------------------- WebSocket

_MAX_REASON = 120  # a close reason is at most 123 bytes


def socket_error_text(error: ApiError) -> str:
    """The edge's error frame (module doc): code name, message, details when there are any; no topic."""
    body: dict[str, Any] = {"code": error.code.name, "message": error.message}
    if error.details:
        body["details"] = error.details
    return orjson.dumps({"type": "error", "error": body}).decode()


def close_reason(message: str) -> str:
    """A close reason cut to what the protocol allows, on a character boundary."""
    return message.encode()[:_MAX_REASON].decode(errors="ignore")
