"""The storage service against a real S3 server (SeaweedFS in CI: MINIO_ENDPOINT, MINIO_ACCESS_KEY,
MINIO_SECRET_KEY). Skipped when MINIO_ENDPOINT is unset, failed instead under LAUNCHPAD_REQUIRE_LIVE=1.

SeaweedFS checks presigned SigV4 signatures, expiry and every signed header (Content-Type, x-amz-meta-owner,
If-None-Match / If-Match), and refuses x-amz-* headers that were not signed, so the refusals below are the
server's own. The policy cases are tests/services/test_storage_policies.py's, on S3.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import load_settings
from services.core.deps import Mode, Registry
from services.core.objectstore import open_object_store
from services.storage.names import physical_bucket
from services.storage.servicer import build
from tests.services.test_storage_policies import NO_SECRETS, OWN_OBJECTS, Book
from tests.support import make_token, metadata, running_service


class Live:
    def __init__(self, stub: storage_pb2_grpc.StorageServiceStub, runtime: Any) -> None:
        self.stub, self.runtime = stub, runtime
        self.tenant = f"t{uuid.uuid4().hex[:10]}"  # a fresh tenant: its buckets are new on every run
        self.dev = metadata(make_token(tenant=self.tenant))

    async def signed(self, path: str, method: str, **fields: Any) -> storage_pb2.CreateSignedUrlResponse:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method=method, **fields)
        return await self.stub.CreateSignedUrl(request, metadata=self.dev)


@pytest.fixture
async def live(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    monkeypatch.setenv("SIMULATION_MODE", "false")  # S3 or nothing: never the folder store
    async with running_service("storage", build) as (runtime, channel):
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        running = Live(stub, runtime)
        await stub.CreateBucket(storage_pb2.CreateBucketRequest(name="photos"), metadata=running.dev)
        yield running
        await stub.DeleteObjects(storage_pb2.DeleteObjectsRequest(prefix="photos/"), metadata=running.dev)


async def test_the_service_runs_live_on_s3(live: Live) -> None:
    [dep] = [d for d in live.runtime.deps.all() if d.name == "objects"]  # "sql": the policy book
    assert (dep.name, dep.mode, dep.healthy) == ("objects", Mode.LIVE, True)
    listed = await live.stub.ListBuckets(storage_pb2.ListBucketsRequest(), metadata=live.dev)
    assert [b.name for b in listed.buckets] == ["photos"] and listed.mode == "live"


async def test_presigned_put_then_get_round_trips_the_bytes(live: Live) -> None:
    data = uuid.uuid4().bytes * 40_000  # 640 KB
    put = await live.signed("photos/dir/blob.bin", "PUT", content_type="application/x-test")
    assert "X-Amz-Signature=" in put.url and put.headers["Content-Type"] == "application/x-test"
    async with httpx.AsyncClient(timeout=30) as http:
        uploaded = await http.put(put.url, content=data, headers=dict(put.headers))
        assert uploaded.status_code == 200, uploaded.text
        get = await live.signed("photos/dir/blob.bin", "GET")
        downloaded = await http.get(get.url)
    assert downloaded.status_code == 200 and downloaded.content == data
    request = storage_pb2.ListObjectsRequest(bucket="photos", prefix="dir/")
    listed = await live.stub.ListObjects(request, metadata=live.dev)
    assert [(o.path, o.size) for o in listed.objects] == [("photos/dir/blob.bin", len(data))]


async def test_s3_refuses_tampered_wrong_method_and_expired_urls(live: Live) -> None:
    put = await live.signed("photos/x", "PUT")
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.put(put.url, content=b"original", headers=dict(put.headers))).status_code == 200
        get = (await live.signed("photos/x", "GET")).url
        signature = get.rsplit("X-Amz-Signature=", 1)[1][:64]
        flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
        tampered = [get.replace(signature, flipped), get.replace("photos/x?", "photos/y?", 1)]
        for url in tampered:
            assert (await http.get(url)).status_code == 403, url
        assert (await http.put(get, content=b"evil")).status_code == 403  # a GET URL used to upload
        short = await live.signed("photos/x", "GET", expires_in=1)
        await asyncio.sleep(2.5)
        assert (await http.get(short.url)).status_code == 403
        assert (await http.get(get)).content == b"original"


async def test_the_object_store_puts_and_gets_bytes_for_other_services(s3_env: str) -> None:
    deps = Registry()
    store = await open_object_store(load_settings("deploy"), deps)
    try:
        bucket = f"lp-test-{uuid.uuid4().hex[:8]}"
        await store.ensure_bucket(bucket)
        info = await store.put(bucket, "a/b.tar.gz", b"artifact", "application/gzip")
        assert info.size == 8 and await store.get(bucket, "a/b.tar.gz") == b"artifact"
        assert [o.key for o in (await store.list(bucket, "a/")).objects] == ["a/b.tar.gz"]
        assert await store.delete(bucket, "a/b.tar.gz") and not await store.delete(bucket, "a/b.tar.gz")
    finally:
        await store.close()
    assert deps.all()[0].mode is Mode.LIVE


async def test_the_owner_is_pinned_by_the_signature(live: Live) -> None:
    put = await live.signed("photos/owned", "PUT", content_type="image/png")
    sent = dict(put.headers)
    assert sent == {"Content-Type": "image/png", "x-amz-meta-owner": "alice"}
    async with httpx.AsyncClient(timeout=30) as http:
        for headers in (
            {},  # the signed headers left out
            {**sent, "x-amz-meta-owner": "mallory"},  # another owner
            {**sent, "Content-Type": "text/html"},  # another content type
            {**sent, "x-amz-meta-extra": "1"},  # metadata nobody signed
        ):
            refused = await http.put(put.url, content=b"x", headers=headers)
            assert refused.status_code == 403, headers
        assert (await http.put(put.url, content=b"png", headers=sent)).status_code == 200
    store = await open_object_store(load_settings("storage"), Registry())
    try:
        info = await store.stat(physical_bucket(live.tenant, "photos"), "owned")
    finally:
        await store.close()
    assert (info.owner, info.content_type) == ("alice", "image/png")


async def test_a_non_ascii_owner_is_kept_as_signed(live: Live) -> None:
    md = metadata(make_token(sub="José Ñ", tenant=live.tenant))
    request = storage_pb2.CreateSignedUrlRequest(path="photos/jose", method="PUT")
    put = await live.stub.CreateSignedUrl(request, metadata=md)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.put(put.url, content=b"x", headers=dict(put.headers))).status_code == 200
    store = await open_object_store(load_settings("storage"), Registry())
    try:
        assert (await store.stat(physical_bucket(live.tenant, "photos"), "jose")).owner == "José Ñ"
    finally:
        await store.close()


class User:
    """One user of a governed tenant, uploading and downloading with the presigned S3 URLs."""

    def __init__(self, stub: Any, http: httpx.AsyncClient, tenant: str, sub: str, role: str) -> None:
        self.stub, self.http = stub, http
        self.md = metadata(make_token(sub=sub, tenant=tenant, roles=(role,)))

    async def signed(self, path: str, method: str) -> storage_pb2.CreateSignedUrlResponse:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method=method)
        return await self.stub.CreateSignedUrl(request, metadata=self.md)

    async def upload(self, path: str) -> httpx.Response:
        put = await self.signed(path, "PUT")
        return await self.http.put(put.url, content=path.encode(), headers=dict(put.headers))

    async def download(self, path: str) -> bytes:
        response = await self.http.get((await self.signed(path, "GET")).url)
        assert response.status_code == 200, response.text
        return response.content

    async def keys(self, bucket: str, size: int = 0) -> list[str]:
        keys, token = [], ""
        while True:
            request = storage_pb2.ListObjectsRequest(bucket=bucket, page_size=size, page_token=token)
            page = await self.stub.ListObjects(request, metadata=self.md)
            keys += [o.key for o in page.objects]
            if not (token := page.next_page_token):
                return keys

    async def delete(self, path: str) -> bool:
        request = storage_pb2.DeleteObjectRequest(path=path)
        return (await self.stub.DeleteObject(request, metadata=self.md)).deleted

    async def delete_prefix(self, prefix: str) -> int:
        request = storage_pb2.DeleteObjectsRequest(prefix=prefix)
        return (await self.stub.DeleteObjects(request, metadata=self.md)).deleted


class Governed:
    def __init__(self, stub: Any, http: httpx.AsyncClient, book: Book) -> None:
        self.book, self.tenant = book, f"t{uuid.uuid4().hex[:10]}"
        self.dev1 = User(stub, http, self.tenant, "dev1", "developer")
        self.dev2 = User(stub, http, self.tenant, "dev2", "developer")
        self.viewer = User(stub, http, self.tenant, "viewer", "viewer")
        self.admin = User(stub, http, self.tenant, "boss", "admin")


@pytest.fixture
async def governed(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Governed]:
    monkeypatch.setenv("SIMULATION_MODE", "false")
    book = Book()

    async def build_with_book(runtime: Any) -> Any:
        return await build(runtime, book)

    async with (
        running_service("storage", build_with_book) as (_, channel),
        httpx.AsyncClient(timeout=30) as http,
    ):
        tenant = Governed(storage_pb2_grpc.StorageServiceStub(channel), http, book)
        for bucket in ("photos", "secret"):
            request = storage_pb2.CreateBucketRequest(name=bucket)
            await tenant.admin.stub.CreateBucket(request, metadata=tenant.admin.md)
        yield tenant
        for bucket in ("photos", "secret"):
            await tenant.admin.delete_prefix(f"{bucket}/")


async def denied(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return err.value.details() or ""


async def test_on_s3_each_user_sees_and_deletes_only_its_own(governed: Governed) -> None:
    g = governed
    g.book.store(g.tenant, OWN_OBJECTS)
    for user, names in ((g.dev1, ("a", "c", "e")), (g.dev2, ("b", "d"))):
        for name in names:
            assert (await user.upload(f"photos/{name}")).status_code == 200
    assert await g.dev1.keys("photos", size=2) == ["a", "c", "e"]  # short pages, none skipped
    assert await g.dev2.keys("photos") == ["b", "d"]
    assert await g.viewer.keys("photos") == []
    assert await g.admin.keys("photos") == ["a", "b", "c", "d", "e"]
    assert await g.dev1.download("photos/a") == b"photos/a"
    hidden = await denied(g.dev1.signed("photos/b", "GET"))
    assert hidden.replace("photos/b", "photos/zz") == await denied(g.dev1.signed("photos/zz", "GET"))
    await denied(g.dev1.signed("photos/b", "PUT"))
    await denied(g.dev1.delete("photos/b"))
    await denied(g.viewer.signed("photos/v", "PUT"))
    assert await g.dev1.delete_prefix("photos/") == 3
    assert await g.admin.keys("photos") == ["b", "d"]
    g.book.store(g.tenant)  # policy removed: as before
    assert await g.dev1.keys("photos") == ["b", "d"]
    assert await g.dev1.download("photos/b") == b"photos/b"


async def test_on_s3_an_upload_url_pins_the_object_it_was_decided_on(governed: Governed) -> None:
    g = governed
    g.book.store(g.tenant, OWN_OBJECTS)
    early = await g.dev1.signed("photos/race", "PUT")
    assert early.headers["If-None-Match"] == "*"
    assert (await g.dev2.upload("photos/race")).status_code == 200
    late = await g.dev1.http.put(early.url, content=b"overwrite", headers=dict(early.headers))
    assert late.status_code == 412  # S3 refuses: the object appeared after the URL was signed
    without = {k: v for k, v in early.headers.items() if k != "If-None-Match"}
    assert (await g.dev1.http.put(early.url, content=b"x", headers=without)).status_code == 403
    assert await g.dev2.download("photos/race") == b"photos/race"
    assert (await g.dev1.upload("photos/own")).status_code == 200
    again = await g.dev1.signed("photos/own", "PUT")  # over the caller's own object: pinned by its ETag
    assert again.headers["If-Match"].startswith('"')
    assert (await g.dev1.http.put(again.url, content=b"1", headers=dict(again.headers))).status_code == 200
    reused = await g.dev1.http.put(again.url, content=b"2", headers=dict(again.headers))
    assert reused.status_code == 412  # governed: one upload per URL
    assert await g.dev1.download("photos/own") == b"1"


async def test_on_s3_a_deny_rule_on_a_bucket_wins(governed: Governed) -> None:
    g = governed
    allow_all = {
        "name": "allow-all",
        "rules": [{"effect": "allow", "actions": ["*"], "resource": "storage:*"}],
    }
    g.book.store(g.tenant, allow_all)
    assert (await g.dev1.upload("secret/plan")).status_code == 200
    g.book.store(g.tenant, allow_all, NO_SECRETS)
    assert await g.dev1.keys("secret") == []
    assert "no-secrets" in await denied(g.dev1.signed("secret/plan", "GET"))
    assert await g.dev1.delete_prefix("secret/") == 0
    assert await g.admin.keys("secret") == ["plan"]
