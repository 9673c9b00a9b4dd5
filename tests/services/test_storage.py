"""The storage service on a real grpc.aio server (port 0), on the embedded folder of buckets.

tests/edge/test_objects.py drives the same service through the edge; tests/live/test_storage_s3.py runs
against a real S3 server (SeaweedFS).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import orjson
import pytest

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.audit import verify_chain
from services.core.deps import Mode
from services.core.objects import decode_metadata, encode_metadata
from services.storage.servicer import build
from tests.support import make_token, metadata, running_service

Stub = storage_pb2_grpc.StorageServiceStub
LIMIT = 300 * 1024


class Storage:
    def __init__(self, stub: Stub, runtime: Any, tenant: str = "acme") -> None:
        self.stub, self.runtime, self.tenant = stub, runtime, tenant
        self.dev = metadata(make_token(sub="dev", tenant=tenant, roles=("developer",)))
        self.viewer = metadata(make_token(sub="viewer", tenant=tenant, roles=("viewer",)))

    def as_tenant(self, tenant: str) -> Storage:
        return Storage(self.stub, self.runtime, tenant)

    async def create(self, name: str) -> storage_pb2.CreateBucketResponse:
        return await self.stub.CreateBucket(storage_pb2.CreateBucketRequest(name=name), metadata=self.dev)

    async def signed(self, path: str, method: str = "PUT", **fields: Any) -> storage_pb2.UrlSignature:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method=method, **fields)
        response = await self.stub.CreateSignedUrl(request, metadata=self.dev)
        return signature_of(response.url)

    async def write(self, sig: storage_pb2.UrlSignature, *chunks: bytes) -> storage_pb2.WriteObjectResponse:
        async def requests() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
            yield storage_pb2.WriteObjectRequest(signature=sig)
            for chunk in chunks:
                yield storage_pb2.WriteObjectRequest(data=chunk)

        return await self.stub.WriteObject(requests(), metadata=metadata())

    async def read(self, sig: storage_pb2.UrlSignature) -> tuple[storage_pb2.ObjectInfo, bytes]:
        messages = [
            m
            async for m in self.stub.ReadObject(
                storage_pb2.ReadObjectRequest(signature=sig), metadata=metadata()
            )
        ]
        return messages[0].info, b"".join(m.data for m in messages)

    async def upload(self, path: str, data: bytes, content_type: str = "") -> storage_pb2.ObjectInfo:
        return (await self.write(await self.signed(path, content_type=content_type), data)).object


def signature_of(url: str) -> storage_pb2.UrlSignature:
    """The UrlSignature the edge builds from an embedded signed URL."""
    parts = urlsplit(url)
    bucket, key = unquote(parts.path).removeprefix("/storage/v1/object/").split("/", 1)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return storage_pb2.UrlSignature(
        tenant=query["tenant"],
        bucket=bucket,
        key=key,
        method=query["method"],
        expires=int(query["expires"]),
        content_type=query.get("ct", ""),
        signature=query["sig"],
    )


@pytest.fixture
async def storage(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Storage]:
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)  # embedded, even where CI configured S3
    monkeypatch.setenv("LAUNCHPAD_MAX_UPLOAD_BYTES", str(LIMIT))
    async with running_service("storage", build) as (runtime, channel):
        yield Storage(Stub(channel), runtime)


async def fails(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code(), err.value.details()


def stored_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "buckets").rglob("*") if p.is_file() and p.name != "bucket.json"]


async def test_buckets_are_created_and_listed_in_embedded_mode(storage: Storage) -> None:
    created = await storage.create("photos")
    await storage.create("docs")
    assert created.bucket.name == "photos" and created.bucket.created_at.seconds > 0
    listed = await storage.stub.ListBuckets(storage_pb2.ListBucketsRequest(), metadata=storage.viewer)
    assert [b.name for b in listed.buckets] == ["docs", "photos"] and listed.mode == "embedded"
    [dep] = [d for d in storage.runtime.deps.all() if d.name == "objects"]  # "sql": the policy book
    assert (dep.name, dep.mode, dep.healthy) == ("objects", Mode.EMBEDDED, True)
    code, _ = await fails(storage.create("photos"))
    assert code == grpc.StatusCode.ALREADY_EXISTS


async def test_signed_upload_then_download_round_trips_the_bytes(storage: Storage) -> None:
    await storage.create("photos")
    data = bytes(range(256)) * 1000  # 256 KB: several chunks each way
    sig = await storage.signed("photos/2024/cat.bin", content_type="image/x-test")
    written = (await storage.write(sig, data[:100_000], data[100_000:])).object
    assert (written.path, written.size, written.content_type) == (
        "photos/2024/cat.bin",
        len(data),
        "image/x-test",
    )
    info, read = await storage.read(await storage.signed("photos/2024/cat.bin", "GET"))
    assert read == data and info.size == len(data) and info.etag == written.etag


async def test_listing_filters_by_prefix_and_pages(storage: Storage) -> None:
    await storage.create("photos")
    for name in ("a/1", "a/2", "a/3", "b/1"):
        await storage.upload(f"photos/{name}", name.encode())
    seen, token = [], ""
    while True:
        request = storage_pb2.ListObjectsRequest(bucket="photos", prefix="a/", page_size=2, page_token=token)
        page = await storage.stub.ListObjects(request, metadata=storage.viewer)
        seen.append([o.key for o in page.objects])
        if not (token := page.next_page_token):
            break
    assert seen == [["a/1", "a/2"], ["a/3"]]


async def test_tampered_expired_and_wrong_method_urls_are_refused(storage: Storage) -> None:
    await storage.create("photos")
    await storage.upload("photos/x", b"secret")
    good = await storage.signed("photos/x", "GET")
    cases = {
        "other key": storage_pb2.UrlSignature(**{**_fields(good), "key": "y"}),
        "later expiry": storage_pb2.UrlSignature(**{**_fields(good), "expires": good.expires + 3600}),
        "bad signature": storage_pb2.UrlSignature(**{**_fields(good), "signature": "0" * 64}),
        "other tenant": storage_pb2.UrlSignature(**{**_fields(good), "tenant": "globex"}),
    }
    for name, sig in cases.items():
        code, _ = await fails(storage.read(sig))
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
    code, message = await fails(storage.write(good, b"overwrite"))  # a GET URL used to upload
    assert code == grpc.StatusCode.PERMISSION_DENIED and "signed for GET" in message
    expiring = await storage.signed("photos/x", "GET", expires_in=1)
    await asyncio.sleep(max(0.0, expiring.expires - time.time()) + 1.1)
    code, message = await fails(storage.read(expiring))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "expired" in message
    assert (await storage.read(good))[1] == b"secret"


def _fields(sig: storage_pb2.UrlSignature) -> dict[str, Any]:
    return {f.name: getattr(sig, f.name) for f in sig.DESCRIPTOR.fields}


@pytest.mark.parametrize(
    "path",
    [
        "photos/../acme.other/x",
        "photos/a/../../b",
        "photos//etc/passwd",
        "photos/a\\b",
        "photos/a\x00b",
        "photos/" + "k" * 1025,
        "photos/",
        "photos/./a",
    ],
)
async def test_bad_keys_are_invalid_argument(storage: Storage, path: str) -> None:
    await storage.create("photos")
    code, _ = await fails(storage.signed(path))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await fails(
        storage.stub.DeleteObject(storage_pb2.DeleteObjectRequest(path=path), metadata=storage.dev)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name", ["Photos", "ab", "-abc", "abc-", "a..b", "my.bucket", "192.168.1.1", "a_b", "x" * 64, ""]
)
async def test_bucket_names_s3_would_reject_are_invalid_argument(storage: Storage, name: str) -> None:
    code, _ = await fails(storage.create(name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not list((storage.runtime.settings.process.data_dir / "buckets").glob("*"))


async def test_an_upload_over_the_limit_is_refused_and_leaves_no_file(
    storage: Storage, settings_env: Path
) -> None:
    await storage.create("photos")
    sig = await storage.signed("photos/big")
    code, message = await fails(storage.write(sig, b"x" * (LIMIT // 2), b"x" * (LIMIT // 2), b"x"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and str(LIMIT) in message
    assert stored_files(settings_env) == []
    await storage.write(sig, b"x" * LIMIT)  # exactly the limit is fine
    assert len(stored_files(settings_env)) == 1


async def test_an_interrupted_upload_leaves_no_partial_object(storage: Storage, settings_env: Path) -> None:
    await storage.create("photos")
    sig = await storage.signed("photos/partial")
    stall = asyncio.Event()

    async def requests() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
        yield storage_pb2.WriteObjectRequest(signature=sig, data=b"first half")
        stall.set()
        await asyncio.sleep(30)  # the client "crashes" here: the call is cancelled
        yield storage_pb2.WriteObjectRequest(data=b"never")

    call = storage.stub.WriteObject(requests(), metadata=metadata())
    await stall.wait()
    await asyncio.sleep(0.2)
    call.cancel()
    await asyncio.sleep(0.3)
    listed = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(bucket="photos"), metadata=storage.dev
    )
    assert list(listed.objects) == [] and stored_files(settings_env) == []


async def test_tenants_see_only_their_own_buckets(storage: Storage) -> None:
    await storage.create("photos")
    await storage.upload("photos/x", b"acme data")
    globex = storage.as_tenant("globex")
    listed = await globex.stub.ListBuckets(storage_pb2.ListBucketsRequest(), metadata=globex.dev)
    assert list(listed.buckets) == []
    code, _ = await fails(
        globex.stub.ListObjects(storage_pb2.ListObjectsRequest(bucket="photos"), metadata=globex.dev)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await fails(globex.signed("photos/x", "GET"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # globex has no bucket "photos"
    await globex.create("photos")  # the same name is another, empty bucket
    empty = await globex.stub.ListObjects(
        storage_pb2.ListObjectsRequest(bucket="photos"), metadata=globex.dev
    )
    assert list(empty.objects) == []
    code, _ = await fails(globex.read(await globex.signed("photos/x", "GET")))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_viewers_read_but_cannot_create_upload_or_delete(storage: Storage) -> None:
    await storage.create("photos")
    await storage.upload("photos/x", b"data")
    v = storage.viewer
    for call in (
        storage.stub.CreateBucket(storage_pb2.CreateBucketRequest(name="mine"), metadata=v),
        storage.stub.CreateSignedUrl(
            storage_pb2.CreateSignedUrlRequest(path="photos/y", method="PUT"), metadata=v
        ),
        storage.stub.DeleteObject(storage_pb2.DeleteObjectRequest(path="photos/x"), metadata=v),
        storage.stub.DeleteObjects(storage_pb2.DeleteObjectsRequest(prefix="photos/"), metadata=v),
    ):
        code, _ = await fails(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    url = await storage.stub.CreateSignedUrl(storage_pb2.CreateSignedUrlRequest(path="photos/x"), metadata=v)
    assert url.method == "GET" and (await storage.read(signature_of(url.url)))[1] == b"data"


async def test_deletes_remove_objects_and_every_mutation_is_audited(storage: Storage) -> None:
    await storage.create("photos")
    for key in ("a/1", "a/2", "b/1"):
        await storage.upload(f"photos/{key}", b"v")
    one = await storage.stub.DeleteObject(
        storage_pb2.DeleteObjectRequest(path="photos/b/1"), metadata=storage.dev
    )
    again = await storage.stub.DeleteObject(
        storage_pb2.DeleteObjectRequest(path="photos/b/1"), metadata=storage.dev
    )
    many = await storage.stub.DeleteObjects(
        storage_pb2.DeleteObjectsRequest(prefix="photos/a/"), metadata=storage.dev
    )
    assert (one.deleted, again.deleted, many.deleted) == (True, False, 2)
    listed = await storage.stub.ListObjects(
        storage_pb2.ListObjectsRequest(bucket="photos"), metadata=storage.dev
    )
    assert list(listed.objects) == []
    audit = storage.runtime.settings.process.audit_path
    events = [orjson.loads(line) for line in audit.read_bytes().splitlines()]
    targets = {(e["action"].rsplit("/", 1)[-1], e.get("target")) for e in events if e["outcome"] == "ok"}
    assert {
        ("CreateBucket", "photos"),
        ("WriteObject", "photos/a/1"),
        ("DeleteObject", "photos/b/1"),
        ("DeleteObjects", "photos/a/"),
    } <= targets
    writes = [e for e in events if e["action"].endswith("WriteObject")]
    assert all(e["tenant"] == "acme" and e["size"] == 1 for e in writes)
    verify_chain(audit)


async def test_simulation_false_with_s3_down_is_unhealthy_not_local(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    monkeypatch.setenv("SIMULATION_MODE", "false")
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{unused_tcp_port}")
    monkeypatch.setenv("MINIO_ACCESS_KEY", "ak")
    monkeypatch.setenv("MINIO_SECRET_KEY", "sk")
    async with running_service("storage", build) as (runtime, channel):
        [dep] = [d for d in runtime.deps.all() if d.name == "objects"]
        assert (dep.mode, dep.healthy) == (Mode.LIVE, False)
        dev = metadata(make_token())
        code, _ = await fails(
            Stub(channel).CreateBucket(storage_pb2.CreateBucketRequest(name="photos"), metadata=dev)
        )
        assert code == grpc.StatusCode.UNAVAILABLE
    assert not (settings_env / "buckets").exists()


@pytest.mark.parametrize("owner", ["alice", "José Ñ", "a  b", " lead", "=?UTF-8?B?eA==?=", "x" * 200])
def test_owner_metadata_survives_http_headers(owner: str) -> None:
    encoded = encode_metadata(owner)
    assert encoded.isascii() and encoded == " ".join(encoded.split())  # what a header carries unchanged
    assert decode_metadata(encoded) == owner
