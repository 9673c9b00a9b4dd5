"""The gRPC -> HTTP table and the JSON error body."""

from __future__ import annotations

import httpx
import orjson
import pytest

from edge.errors import HTTP_STATUS, error_body, error_response, request_id_of, send_error, status_for
from services.core.errors import Code

# grpc-gateway runtime/errors.go HTTPStatusFromCode, by name so a renumbering would show.
GATEWAY = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def test_table_is_grpc_gateways_and_covers_every_code() -> None:
    assert {Code(code).name: status for code, status in HTTP_STATUS.items()} == GATEWAY
    assert set(HTTP_STATUS) == set(Code)


def test_unknown_code_number_is_500() -> None:
    assert status_for(99) == 500
    assert status_for(Code.NOT_FOUND) == 404


def test_error_body_shape() -> None:
    body = orjson.loads(error_body(Code.NOT_FOUND, "no such table", "rid-1", [{"table": "t"}]))
    assert body == {"code": 5, "message": "no such table", "details": [{"table": "t"}], "request_id": "rid-1"}
    assert orjson.loads(error_body(Code.INTERNAL, "x", "r"))["details"] == []


def test_error_response_status_headers_and_override() -> None:
    response = error_response(
        Code.UNAUTHENTICATED, "token expired", "r", headers={"www-authenticate": "Bearer"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    too_large = error_response(Code.INVALID_ARGUMENT, "too big", "r", http_status=413)
    assert too_large.status_code == 413
    assert orjson.loads(too_large.body)["code"] == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("code", "override", "expected"),
    [(Code.RESOURCE_EXHAUSTED, None, 429), (Code.INVALID_ARGUMENT, 415, 415)],
)
async def test_send_error_from_asgi(code: Code, override: int | None, expected: int) -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send_error(
            send, code, "nope", request_id_of(scope), headers={"Retry-After": "3"}, http_status=override
        )

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge") as client:
        response = await client.get("/")
    assert response.status_code == expected
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.json() == {"code": int(code), "message": "nope", "details": [], "request_id": ""}


def test_request_id_of_reads_state() -> None:
    assert request_id_of({"type": "http", "state": {"request_id": "abc"}}) == "abc"
    assert request_id_of({"type": "http"}) == ""
