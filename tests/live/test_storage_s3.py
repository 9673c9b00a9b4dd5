"""The storage service against a real S3 server (SeaweedFS in CI: MINIO_ENDPOINT, MINIO_ACCESS_KEY,
MINIO_SECRET_KEY). Skipped when MINIO_ENDPOINT is unset, failed instead under LAUNCHPAD_REQUIRE_LIVE=1.

SeaweedFS checks presigned SigV4 signatures and expiry, so the refusals below are the server's own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import load_settings
from services.core.deps import Mode, Registry
from services.core.objectstore import open_object_store
from services.storage.servicer import build
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
    [dep] = live.runtime.deps.all()
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
        assert (await http.put(put.url, content=b"original")).status_code == 200
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
