"""Request id, body limit and content type middleware, on a tiny echo ASGI app."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.routing import Route

from edge.errors import request_id_of
from edge.middleware.body_limit import BodyLimitMiddleware
from edge.middleware.content_type import ContentTypeMiddleware
from edge.middleware.rate_limit import MemoryRateLimiter, RateLimitMiddleware
from edge.middleware.request_id import RequestIdMiddleware
from edge.middleware.waf import WafMiddleware
from edge.transcoding.rules import RouteRule
from edge.transcoding.table import FindRoute, RouteTable

LIMIT = 2 * 1024 * 1024
JSON = {"content-type": "application/json"}


class Echo:
    """Reads the whole body, answers {"size", "sha256", "request_id"}; records what happened."""

    def __init__(self) -> None:
        self.calls = 0
        self.bytes_read = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            self.bytes_read += len(chunks[-1])
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        payload = {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "request_id": request_id_of(scope),
        }
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(payload)})


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://edge")


async def chunks(total: int, size: int = 64 * 1024, sent: list[int] | None = None) -> AsyncIterator[bytes]:
    """`total` bytes as a chunked body (no Content-Length); appends each chunk's size to `sent`."""
    while total > 0:
        piece = min(size, total)
        total -= piece
        if sent is not None:
            sent.append(piece)
        yield b"x" * piece


# --- request id -------------------------------------------------------------------------------------------


async def test_request_id_created_when_absent_and_echoed() -> None:
    async with client(RequestIdMiddleware(Echo())) as c:
        first, second = await c.get("/"), await c.get("/")
    rid = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert first.json()["request_id"] == rid
    assert second.headers["x-request-id"] != rid


@pytest.mark.parametrize("sane", ["abc-123", "trace:1.2_3", "a" * 128])
async def test_sane_client_request_id_is_kept(sane: str) -> None:
    async with client(RequestIdMiddleware(Echo())) as c:
        response = await c.get("/", headers={"x-request-id": sane})
    assert response.headers["x-request-id"] == sane
    assert response.json()["request_id"] == sane


@pytest.mark.parametrize("insane", ["a" * 129, "has space", "<script>", "line\tbreak", "semi;colon", ""])
async def test_insane_client_request_id_is_replaced(insane: str) -> None:
    async with client(RequestIdMiddleware(Echo())) as c:
        response = await c.get("/", headers={"x-request-id": insane})
    rid = response.headers["x-request-id"]
    assert rid != insane
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert response.json()["request_id"] == rid


async def test_request_id_replaces_one_set_by_the_app() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": [(b"X-Request-Id", b"other")]})
        await send({"type": "http.response.body", "body": b""})

    async with client(RequestIdMiddleware(app)) as c:
        response = await c.get("/", headers={"x-request-id": "mine"})
    assert response.headers.get_list("x-request-id") == ["mine"]


async def test_request_id_on_error_answers_and_kept_state() -> None:
    app = RequestIdMiddleware(BodyLimitMiddleware(Echo(), 10))
    async with client(app) as c:
        response = await c.post("/", content=b"x" * 11, headers={"x-request-id": "err-1", **JSON})
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "err-1"
    assert response.json()["request_id"] == "err-1"


async def test_request_id_on_websocket_accept_and_existing_state_kept() -> None:
    sent: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope["state"])
        await send({"type": "websocket.accept", "headers": [(b"sec-websocket-protocol", b"json")]})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"x-request-id", b"ws-1")], "state": {"app": 1}}
    await RequestIdMiddleware(app)(scope, None, send)
    assert seen == {"app": 1, "request_id": "ws-1"}
    assert sent[0]["headers"] == [(b"sec-websocket-protocol", b"json"), (b"x-request-id", b"ws-1")]


async def test_lifespan_passes_through_untouched() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    await RequestIdMiddleware(app)({"type": "lifespan"}, None, None)
    assert seen == [{"type": "lifespan"}]


# --- body limit -------------------------------------------------------------------------------------------


async def test_exact_limit_passes_with_content_length() -> None:
    async with client(BodyLimitMiddleware(Echo(), LIMIT)) as c:
        response = await c.post("/", content=b"x" * LIMIT, headers=JSON)
    assert response.status_code == 200
    assert response.json()["size"] == LIMIT


async def test_limit_plus_one_with_content_length_is_413_unread() -> None:
    echo = Echo()
    async with client(BodyLimitMiddleware(echo, LIMIT)) as c:
        response = await c.post("/", content=b"x" * (LIMIT + 1), headers=JSON)
    assert response.status_code == 413
    assert response.json()["code"] == 3  # INVALID_ARGUMENT, see edge/errors.py
    assert str(LIMIT) in response.json()["message"]
    assert echo.calls == 0  # refused on the header, before anything was read


async def test_exact_limit_passes_chunked() -> None:
    async with client(BodyLimitMiddleware(Echo(), LIMIT)) as c:
        response = await c.post("/", content=chunks(LIMIT), headers=JSON)
    assert response.status_code == 200
    assert response.json()["size"] == LIMIT


async def test_limit_plus_one_chunked_is_413_without_reading_it_all() -> None:
    echo = Echo()
    sent: list[int] = []
    async with client(BodyLimitMiddleware(echo, LIMIT)) as c:
        response = await c.post("/", content=chunks(LIMIT + 1 + 10 * 64 * 1024, sent=sent), headers=JSON)
    assert response.status_code == 413
    assert response.json()["message"] == f"request body larger than {LIMIT} bytes"
    # Reading stopped at the chunk that crossed the limit; the app never saw that chunk.
    assert echo.bytes_read <= LIMIT
    assert sum(sent) <= LIMIT + 64 * 1024


async def test_chunked_overflow_wins_over_an_app_that_swallows_the_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            # What FastAPI does with a failing body read: its own 400.
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad body"})

    async with client(BodyLimitMiddleware(app, 1000)) as c:
        response = await c.post("/", content=chunks(1001, size=100), headers=JSON)
    assert response.status_code == 413
    assert response.json()["code"] == 3


async def test_chunked_overflow_after_response_started_aborts() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    async with client(BodyLimitMiddleware(app, 1000)) as c:
        with pytest.raises(Exception) as failure:  # the type is private; its name is checked below
            await c.post("/", content=chunks(1001, size=100), headers=JSON)
    assert type(failure.value).__name__ == "_BodyTooLarge"


async def test_invalid_content_length_is_400() -> None:
    echo = Echo()
    app = BodyLimitMiddleware(echo, 10)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(
        {"type": "http", "headers": [(b"content-length", b"-5")], "method": "POST", "path": "/"}, None, send
    )
    assert sent[0]["status"] == 400
    assert echo.calls == 0


# --- content type -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "application/json-patch+json",
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
async def test_wrong_or_missing_content_type_is_415(method: str, content_type: str | None) -> None:
    echo = Echo()
    headers = {"content-type": content_type} if content_type else {}
    async with client(ContentTypeMiddleware(echo)) as c:
        response = await c.request(method, "/api/users", content=b'{"a": 1}', headers=headers)
    assert response.status_code == 415
    assert response.json()["message"] == "request body must be application/json"
    assert echo.calls == 0


async def test_wrong_content_type_chunked_is_415() -> None:
    async with client(ContentTypeMiddleware(Echo())) as c:
        response = await c.post("/api/users", content=chunks(10), headers={"content-type": "text/plain"})
    assert response.status_code == 415


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON ;x=y"]
)
async def test_json_with_parameters_passes(content_type: str) -> None:
    async with client(ContentTypeMiddleware(Echo())) as c:
        response = await c.post("/api/users", content=b"{}", headers={"content-type": content_type})
    assert response.status_code == 200


async def test_requests_without_body_need_no_content_type() -> None:
    async with client(ContentTypeMiddleware(Echo())) as c:
        assert (await c.get("/api/users")).status_code == 200
        assert (await c.post("/api/wpk/deploy", content=b"")).status_code == 200
        assert (await c.delete("/api/users/bob")).status_code == 200


@dataclasses.dataclass
class Ruled:
    """A route's endpoint as FindRoute sees it: the rule it declares (never called here)."""

    rule: RouteRule

    def rule_for(self, http_method: str) -> RouteRule:
        return self.rule


def find_route(app: Any, *routes: tuple[str, str, RouteRule]) -> FindRoute:
    """`app` behind FindRoute over (verb, path, rule) routes."""
    table = RouteTable([Route(path, Ruled(rule), methods=[verb]) for verb, path, rule in routes])
    return FindRoute(app, table)


async def test_raw_body_routes_stream_raw_bytes() -> None:
    path = "/storage/upload/{bucket}/{key:path}"
    app = find_route(ContentTypeMiddleware(Echo()), ("PUT", path, RouteRule(raw_body=True)))
    octets = {"content-type": "application/octet-stream"}
    async with client(app) as c:
        assert (await c.put("/storage/upload/b/k", content=b"\x00\x01", headers=octets)).status_code == 200
        assert (await c.put("/storage/other", content=b"\x00\x01", headers=octets)).status_code == 415


async def test_rules_are_per_verb_on_one_path() -> None:
    """Two verbs on one path each get their own rule: the POST does not inherit the PUT's raw body."""
    path = "/storage/upload/{bucket}/{key:path}"
    app = find_route(
        ContentTypeMiddleware(Echo()),
        ("PUT", path, RouteRule(raw_body=True)),
        ("POST", path, RouteRule(waf_skip=True)),
    )
    octets = {"content-type": "application/octet-stream"}
    async with client(app) as c:
        assert (await c.put("/storage/upload/b/k", content=b"\x00", headers=octets)).status_code == 200
        assert (await c.post("/storage/upload/b/k", content=b"\x00", headers=octets)).status_code == 415


# --- the whole stack --------------------------------------------------------------------------------------


class Audit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(self, event: dict[str, Any]) -> str:
        self.events.append(event)
        return "sha"


def full_stack(app: Any, audit: Audit | None = None) -> Any:
    """The edge's order (edge/app.py), outermost first: request id, body limit, content type, rate limit, WAF."""
    app = WafMiddleware(app, audit or Audit(), max_body_bytes=LIMIT)
    app = RateLimitMiddleware(app, MemoryRateLimiter(), None, per_principal=100, per_ip=100)
    return RequestIdMiddleware(BodyLimitMiddleware(ContentTypeMiddleware(app), LIMIT))


async def test_stack_chunked_overflow_inside_the_waf_read_is_413() -> None:
    echo = Echo()
    async with client(full_stack(echo)) as c:
        response = await c.post(
            "/api/users", content=chunks(LIMIT + 1), headers={**JSON, "x-request-id": "s-1"}
        )
        ok = await c.post("/api/users", content=chunks(LIMIT), headers=JSON)
    assert response.status_code == 413
    assert response.headers["x-request-id"] == "s-1"
    assert echo.calls == 1
    assert ok.status_code == 200
    assert ok.json()["size"] == LIMIT


async def test_stack_waf_audit_carries_the_request_id() -> None:
    audit = Audit()
    async with client(full_stack(Echo(), audit)) as c:
        response = await c.post(
            "/api/users", json={"name": "<script>x</script>"}, headers={"x-request-id": "w-1"}
        )
    assert response.status_code == 403
    assert response.headers["x-request-id"] == "w-1"
    assert audit.events[0]["request_id"] == "w-1"
