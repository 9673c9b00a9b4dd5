"""Embedded object storage through the edge: the real storage service (grpc, port 0) behind the real app.

The JSON API (/api/storage/...) creates buckets and signed URLs; the signed URLs are served by the edge's
/storage/v1/object/ routes, streaming to and from the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY

from launchpad.storage.v1 import storage_pb2
from services.core.config import load_settings
from services.core.server import create_server, new_runtime
from services.core.tokens import TokenVerifier
from services.storage.servicer import build
from tests.edge.test_edge_app import edge_app
from tests.services.test_storage_policies import OWN_OBJECTS, Book
from tests.support import AUDIENCE, ISSUER, TEST_KEYS, make_token

LIMIT = 4 * 1024 * 1024  # the upload limit; the API body limit stays 2 MB
MB = 1024 * 1024


@dataclasses.dataclass
class Edge:
    client: httpx.AsyncClient
    data_dir: Path

    def auth(self, role: str = "developer", tenant: str = "acme") -> dict[str, str]:
        return {"authorization": f"Bearer {make_token(sub=role, tenant=tenant, roles=(role,))}"}

    async def signed(self, path: str, method: str, **fields: Any) -> dict[str, Any]:
        body = {"path": path, "method": method, **fields}
        response = await self.client.post("/api/storage/signed-url", json=body, headers=self.auth())
        assert response.status_code == 200, response.text
        return response.json()

    def files(self) -> list[Path]:
        return [p for p in (self.data_dir / "buckets").rglob("*") if p.is_file() and p.name != "bucket.json"]


@contextlib.asynccontextmanager
async def storage_edge(data_dir: Path, book: Any = None) -> AsyncIterator[Edge]:
    runtime = new_runtime(load_settings("storage"))
    runtime.keys = TEST_KEYS
    server, port = await create_server(runtime, await build(runtime, book), port=0)
    app = edge_app({"storage": f"127.0.0.1:{port}"}, verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            yield Edge(client, data_dir)
    finally:
        await app.state.edge.backends.close()
        await server.stop(None)
        await runtime.close()


@pytest.fixture
async def edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)  # embedded, even where CI configured S3
    monkeypatch.setenv("LAUNCHPAD_MAX_UPLOAD_BYTES", str(LIMIT))
    async with storage_edge(settings_env) as running:
        response = await running.client.post(
            "/api/storage/buckets", json={"name": "photos"}, headers=running.auth()
        )
        assert response.status_code == 200, response.text
        yield running


def assert_error(response: httpx.Response, status: int, code: int, text: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and text in body["message"] and body["request_id"]


async def test_buckets_are_listed_with_the_mode(edge: Edge) -> None:
    response = await edge.client.get("/api/storage/buckets", headers=edge.auth("viewer"))
    assert response.status_code == 200
    body = response.json()
    assert [b["name"] for b in body["buckets"]] == ["photos"] and body["mode"] == "embedded"


async def test_signed_upload_then_download_round_trips_3_mb(edge: Edge) -> None:
    data = bytes(range(256)) * (3 * MB // 256)  # over the 2 MB API limit, under the upload limit
    put = await edge.signed("photos/big/file.bin", "PUT", content_type="application/x-test")
    assert put["url"].startswith("http://127.0.0.1:8001/storage/v1/object/photos/big/file.bin?")
    assert put["headers"] == {"Content-Type": "application/x-test"}
    uploaded = await edge.client.put(put["url"], content=data, headers=put["headers"])
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["object"]["size"] == len(data)
    get = await edge.signed("photos/big/file.bin", "GET")
    downloaded = await edge.client.get(get["url"])
    assert downloaded.status_code == 200 and downloaded.content == data
    assert downloaded.headers["content-type"] == "application/x-test"
    assert downloaded.headers["content-length"] == str(len(data))


async def test_chunked_uploads_stream_without_content_length(edge: Edge) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"z" * MB

    put = await edge.signed("photos/chunked", "PUT")
    assert (await edge.client.put(put["url"], content=body())).status_code == 200
    get = await edge.client.get((await edge.signed("photos/chunked", "GET"))["url"])
    assert get.content == b"z" * 3 * MB


async def test_tampered_expired_and_wrong_method_urls_are_403(edge: Edge) -> None:
    put = await edge.signed("photos/x", "PUT")
    assert (await edge.client.put(put["url"], content=b"original")).status_code == 200
    get = (await edge.signed("photos/x", "GET"))["url"]
    tampered = [
        get.replace("sig=", "sig=0"),
        get.replace("/photos/x?", "/photos/y?"),
        get.replace("tenant=acme", "tenant=globex"),
        get.replace("expires=", "expires=9"),
    ]
    for url in tampered:
        assert_error(await edge.client.get(url), 403, 7)
    assert_error(await edge.client.put(get, content=b"evil"), 403, 7, "signed for GET")
    assert_error(await edge.client.get(put["url"]), 403, 7, "signed for PUT")
    short = await edge.signed("photos/x", "GET", expires_in=1)
    await asyncio.sleep(2.1)  # expires_in=1 from a whole-second clock: expired within 2 s
    assert_error(await edge.client.get(short["url"]), 403, 7, "expired")
    assert (await edge.client.get(get)).content == b"original"


async def test_uploads_must_send_the_signed_content_type(edge: Edge) -> None:
    put = await edge.signed("photos/typed", "PUT", content_type="text/plain")
    assert_error(
        await edge.client.put(put["url"], content=b"x", headers={"content-type": "text/html"}), 403, 7
    )
    assert edge.files() == []


async def test_path_traversal_is_refused(edge: Edge) -> None:
    # ".." is already stopped by the edge's WAF (403); what the WAF lets through the service refuses (400).
    for path, status in (("photos/../acme.other/x", 403), ("photos//etc/passwd", 400), ("photos/a\\b", 400)):
        response = await edge.client.post(
            "/api/storage/signed-url", json={"path": path, "method": "PUT"}, headers=edge.auth()
        )
        assert response.status_code == status, (path, response.text)
    put = await edge.signed("photos/ok", "PUT")
    escaped = put["url"].replace("/photos/ok?", "/photos/..%2F..%2Fescape?")
    assert (await edge.client.put(escaped, content=b"x")).status_code in (400, 403)
    assert edge.files() == []


async def test_bad_bucket_names_are_400(edge: Edge) -> None:
    for name in ("UPPER", "a.b", "x", "-lead", "10.0.0.1"):
        response = await edge.client.post("/api/storage/buckets", json={"name": name}, headers=edge.auth())
        assert_error(response, 400, 3)


async def test_uploads_over_the_limit_are_413_and_leave_no_file(edge: Edge) -> None:
    put = await edge.signed("photos/huge", "PUT")
    declared = await edge.client.put(put["url"], content=b"x" * (LIMIT + 1))
    assert_error(declared, 413, 3)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(LIMIT // MB + 2):
            yield b"y" * MB

    chunked = await edge.client.put(put["url"], content=endless())
    assert chunked.status_code == 413
    # The edge cancels the WriteObject call; the service drops its temporary file as the cancel arrives.
    for _ in range(200):  # a loaded machine may take a while to deliver the cancel
        if not edge.files():
            break
        await asyncio.sleep(0.05)
    assert edge.files() == []


async def test_the_api_body_limit_still_holds_elsewhere(edge: Edge) -> None:
    body = b'{"name": "' + b"a" * (3 * MB) + b'"}'
    response = await edge.client.post(
        "/api/storage/buckets", content=body, headers={**edge.auth(), "content-type": "application/json"}
    )
    assert_error(response, 413, 3)
    raw = await edge.client.post(
        "/api/storage/buckets", content=b"raw", headers={**edge.auth(), "content-type": "text/plain"}
    )
    assert raw.status_code == 415


async def test_other_tenants_and_viewers_are_refused(edge: Edge) -> None:
    put = await edge.signed("photos/private", "PUT")
    assert (await edge.client.put(put["url"], content=b"acme only")).status_code == 200
    globex = edge.auth(tenant="globex")
    listed = await edge.client.get("/api/storage/buckets", headers=globex)
    assert listed.json()["buckets"] == []
    objects = await edge.client.get("/api/storage/buckets/photos/objects", headers=globex)
    assert_error(objects, 404, 5)
    viewer = edge.auth("viewer")
    assert_error(
        await edge.client.post("/api/storage/buckets", json={"name": "mine"}, headers=viewer), 403, 7
    )
    upload = await edge.client.post(
        "/api/storage/signed-url", json={"path": "photos/v", "method": "PUT"}, headers=viewer
    )
    assert_error(upload, 403, 7)
    deleted = await edge.client.post(
        "/api/storage/object/delete", json={"path": "photos/private"}, headers=viewer
    )
    assert_error(deleted, 403, 7)
    assert (
        await edge.client.post(
            "/api/storage/object/delete", json={"path": "photos/private"}, headers=edge.auth()
        )
    ).json() == {"deleted": True}
    assert edge.files() == []


async def test_policies_hold_through_the_edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """own-objects: the owner rides inside the URL's `sig` through the edge; the refusal is a 403 naming it."""
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    book = Book()
    async with storage_edge(settings_env, book) as edge:
        created = await edge.client.post("/api/storage/buckets", json={"name": "photos"}, headers=edge.auth())
        assert created.status_code == 200, created.text
        book.store("acme", OWN_OBJECTS)
        put = await edge.signed("photos/mine", "PUT")  # signed by sub "developer" (Edge.auth)
        assert (await edge.client.put(put["url"], content=b"mine")).status_code == 200
        forged = put["url"].replace("sig=", "sig=0")
        assert_error(await edge.client.put(forged, content=b"x"), 403, 7)
        other = {"authorization": f"Bearer {make_token(sub='dev2', tenant='acme', roles=('developer',))}"}
        listed = await edge.client.get("/api/storage/buckets/photos/objects", headers=other)
        assert listed.status_code == 200 and listed.json().get("objects", []) == []
        refused = await edge.client.post(
            "/api/storage/signed-url", json={"path": "photos/mine", "method": "GET"}, headers=other
        )
        assert_error(refused, 403, 7, "storage policy denies read on storage:photos/mine")
        mine = await edge.client.get("/api/storage/buckets/photos/objects", headers=edge.auth())
        assert [o["key"] for o in mine.json()["objects"]] == ["mine"]
        assert (await edge.client.get((await edge.signed("photos/mine", "GET"))["url"])).content == b"mine"


# --- a download that fails after its headers went out ------------------------------------------------------


async def _breaking_storage(code: grpc.StatusCode) -> tuple[grpc.aio.Server, str]:
    """A StorageService whose ReadObject sends one chunk (headers go out), then fails with `code`."""

    async def read(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        info = storage_pb2.ObjectInfo(size=10, content_type="text/plain", etag="e")
        yield storage_pb2.ReadObjectResponse(data=b"12345", info=info)
        await context.abort(code, "the object went away")

    handler = grpc.unary_stream_rpc_method_handler(
        read,
        request_deserializer=storage_pb2.ReadObjectRequest.FromString,
        response_serializer=storage_pb2.ReadObjectResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("launchpad.storage.v1.StorageService", {"ReadObject": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def asgi_get(app: Any, path: str) -> list[dict[str, Any]]:
    """GET over raw ASGI: every message the app sent (a response cut short cannot be read with httpx)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"sig=abc",
        "headers": [(b"host", b"edge")],
        "client": ("127.0.0.1", 5000),
        "server": ("edge", 80),
    }
    await app(scope, receive, send)
    return sent


def backend_errors(service: str, code: str) -> float:
    labels = {"service": service, "code": code}
    return REGISTRY.get_sample_value("launchpad_edge_backend_errors_total", labels) or 0.0


@pytest.mark.parametrize("code", ["NOT_FOUND", "DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE"])
async def test_a_download_failing_after_its_headers_is_logged_once_and_counted_for_storage(
    settings_env: Path, caplog: pytest.LogCaptureFixture, code: str
) -> None:
    server, address = await _breaking_storage(getattr(grpc.StatusCode, code))
    app = edge_app({"storage": address}, verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE))
    before = backend_errors("storage", code), backend_errors("", code)
    try:
        with caplog.at_level(logging.INFO, logger="launchpad.edge"):
            sent = await asgi_get(app, "/storage/v1/object/photos/a.txt")
    finally:
        await app.state.edge.backends.close()
        await server.stop(None)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert [m.get("body") for m in sent[1:]] == [b"12345"]  # cut short: never a final body message
    assert (backend_errors("storage", code), backend_errors("", code)) == (before[0] + 1, before[1])
    late = [r for r in caplog.records if "after its response started" in r.getMessage()]
    assert len(late) == 1 and late[0].levelno == logging.ERROR and late[0].exc_info is not None
    assert code in "".join(traceback.format_exception(*late[0].exc_info))  # the backend's status, quoted
    assert not [r for r in caplog.records if "edge:  " in r.getMessage()]  # never an empty service name
