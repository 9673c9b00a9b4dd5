"""The gRPC -> HTTP table, the JSON error body, one rendering for every writer, and what a client is told."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from edge.errors import (
    HTTP_STATUS,
    ApiError,
    api_error,
    api_response,
    error_body,
    http_parts,
    internal_message,
    request_id_of,
    send_api_error,
    send_error,
    status_for,
)
from services.core.errors import Code, ServiceError
from services.core.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, TEST_KEYS

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
    response = api_response(
        ApiError(Code.UNAUTHENTICATED, "token expired", headers={"www-authenticate": "Bearer"}), "r"
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    too_large = api_response(ApiError(Code.INVALID_ARGUMENT, "too big", http_status=413), "r")
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


# --- one HTTP rendering for every path ----------------------------------------------------------------------

RETRY = ApiError(Code.RESOURCE_EXHAUSTED, "too many logins", [{"retry_after_s": 2.5}])
ERRORS = [
    ApiError(Code.UNAUTHENTICATED, "token expired"),
    RETRY,
    ApiError(Code.RESOURCE_EXHAUSTED, "slow down", headers={"Retry-After": "7"}),
    ApiError(Code.NOT_FOUND, "no such table", [{"table": "t"}]),
    ApiError(Code.UNIMPLEMENTED, "Method Not Allowed", http_status=405, headers={"Allow": "GET"}),
]


async def _sent(error: ApiError) -> httpx.Response:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send_api_error(send, error, "rid-1")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge") as client:
        return await client.get("/")


async def test_every_error_writer_adds_www_authenticate_and_retry_after() -> None:
    """Middleware, the object routes, ErrorGuard and FastAPI's handlers answer like a transcoded RPC does."""
    unauthenticated = await _sent(ApiError(Code.UNAUTHENTICATED, "token expired"))
    assert unauthenticated.headers["www-authenticate"] == 'Bearer realm="launchpad"'
    assert (await _sent(RETRY)).headers["retry-after"] == "3"
    response = api_response(RETRY, "rid-1")
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert (
        api_response(ApiError(Code.UNAUTHENTICATED, "x"), "r")
        .headers["www-authenticate"]
        .startswith("Bearer")
    )


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{e.code.name}-{e.http_status}")
async def test_the_error_writers_agree(error: ApiError) -> None:
    body, status, headers = http_parts(error, "rid-1")
    expected = {k.decode(): v.decode() for k, v in headers}
    sent, response = await _sent(error), api_response(error, "rid-1")
    for answer, answer_body in ((sent, sent.content), (response, response.body)):
        assert answer.status_code == status
        assert answer_body == body
        assert {k: answer.headers[k] for k in expected} == expected
        assert answer.headers["content-length"] == str(len(body))
    assert len([k for k, _ in headers if k == b"retry-after"]) <= 1  # an explicit Retry-After wins


# --- what a client is told ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [Code.INTERNAL, Code.UNKNOWN, Code.DATA_LOSS], ids=lambda c: c.name)
def test_internal_service_errors_are_logged_not_sent(code: Code, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="launchpad.edge"):
        error = api_error(ServiceError("pool: password=hunter2 at 10.0.0.5", code=code), "rid-9")
    assert (error.code, error.message, error.details) == (code, internal_message("rid-9"), [])
    assert any("hunter2" in r.getMessage() for r in caplog.records)  # the operator still sees it


def test_client_service_errors_keep_their_message_and_details() -> None:
    error = api_error(ServiceError("no such table", code=Code.NOT_FOUND, table="t"), "r")
    assert (error.code, error.message, error.details) == (Code.NOT_FOUND, "no such table", [{"table": "t"}])


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "failed to connect to all")


def _backend_errors(service: str, code: str) -> float:
    labels = {"service": service, "code": code}
    return REGISTRY.get_sample_value("launchpad_edge_backend_errors_total", labels) or 0.0


def test_a_backend_failure_needs_its_service(caplog: pytest.LogCaptureFixture) -> None:
    """Without the service it is the caller's bug: logged, INTERNAL, never counted under an empty name."""
    before = _backend_errors("", "UNAVAILABLE")
    with caplog.at_level(logging.WARNING, logger="launchpad.edge"):
        error = api_error(_rpc_error(grpc.StatusCode.UNAVAILABLE), "rid-2", where="a test")
    assert (error.code, error.message) == (Code.INTERNAL, internal_message("rid-2"))
    assert _backend_errors("", "UNAVAILABLE") == before
    records = [r for r in caplog.records if r.name == "launchpad.edge"]
    assert [r.levelno for r in records] == [logging.ERROR]
    assert "without its service" in records[0].getMessage()
    assert not any("edge:  " in r.getMessage() for r in records)
    named = api_error(_rpc_error(grpc.StatusCode.UNAVAILABLE), "rid-3", "data")
    assert (named.code, named.message) == (
        Code.UNAVAILABLE,
        "the data service is unavailable (cannot connect)",
    )


async def test_an_unexpected_error_in_fastapis_stack_is_logged_once(
    settings_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.edge.test_edge_app import edge_app

    app = edge_app({}, verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE))

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)
    try:
        with caplog.at_level(logging.INFO, logger="launchpad.edge"):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://edge"
            ) as client:
                response = await client.get("/boom")
    finally:
        await app.state.edge.backends.close()
    assert response.status_code == 500
    assert response.json()["message"] == internal_message(response.headers["x-request-id"])
    logged = [r for r in caplog.records if r.name.startswith("launchpad.edge") and r.exc_info is not None]
    assert len(logged) == 1, [r.getMessage() for r in logged]


@pytest.mark.parametrize(
    "transport",
    [
        "failed to connect to all addresses",
        "Stream removed (recvmsg:Connection reset by peer (104))",  # the backend died mid-call
        "Socket closed",
    ],
)
def test_transport_failures_name_the_service_not_the_channel(transport: str) -> None:
    failure = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), transport
    )
    error = api_error(failure, "r", service="data")
    assert (error.code, error.message) == (
        Code.UNAVAILABLE,
        "the data service is unavailable (cannot connect)",
    )


def test_a_services_own_unavailable_keeps_its_message() -> None:
    failure = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "PostgreSQL is not available: connection refused",
    )
    assert (
        api_error(failure, "r", service="data").message == "PostgreSQL is not available: connection refused"
    )
