"""StorageService over gRPC: a tenant's buckets and objects on the object store (live S3 or embedded folder).

Tenants see only their own buckets: the tenant's bucket "photos" is the physical bucket "<tenant>.photos"
(underscores of the tenant name become hyphens). A dot separates them because neither a tenant slug nor a
tenant's bucket name can contain one, so no (tenant, name) pair can land on another tenant's physical bucket
-- "<tenant>-photos" would let tenant "a" bucket "b-c" collide with tenant "a_b" bucket "c".

Embedded signed URLs point at the edge and carry an HMAC-SHA256 over method, tenant, bucket, key, expiry and
(uploads) content type; ReadObject/WriteObject verify it. Live signed URLs are the S3 SDK's own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import Settings
from services.core.context import TENANT_NAME, current_call, current_principal
from services.core.deps import Mode
from services.core.errors import InvalidArgument, PermissionDenied
from services.core.files import create_once
from services.core.objectstore import (
    BucketInfo,
    ObjectInfo,
    ObjectStore,
    check_bucket,
    check_content_type,
    check_key,
    open_object_store,
)
from services.core.server import Runtime, ServiceSpec

DEFAULT_EXPIRES_S = 900
MAX_EXPIRES_S = 7 * 24 * 3600  # S3's limit for SigV4 presigned URLs
OBJECT_ROUTE = "/storage/v1/object"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_METHODS = ("GET", "PUT")


# --- names --------------------------------------------------------------------------------------------


def tenant_slug(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise PermissionDenied(f"invalid tenant {tenant[:40]!r}")
    return tenant.replace("_", "-")


def physical_bucket(tenant: str, name: str) -> str:
    """The tenant's bucket `name` as the store names it; InvalidArgument for names S3 would reject."""
    if not _NAME.fullmatch(name) or not 3 <= len(name) <= 63:
        raise InvalidArgument(
            f"invalid bucket name {name[:70]!r}: 3-63 lowercase letters, digits and hyphens, "
            "starting and ending with a letter or digit",
            field="bucket",
        )
    return check_bucket(f"{tenant_slug(tenant)}.{name}")


def tenant_buckets(tenant: str, buckets: list[BucketInfo]) -> list[BucketInfo]:
    prefix = f"{tenant_slug(tenant)}."
    return [
        BucketInfo(b.name[len(prefix) :], b.created_at)
        for b in buckets
        if b.name.startswith(prefix) and "." not in b.name[len(prefix) :]
    ]


def split_path(path: str) -> tuple[str, str]:
    bucket, sep, key = path.partition("/")
    if not sep or not bucket:
        raise InvalidArgument(f"path {path[:80]!r} must be 'bucket/key'", field="path")
    return bucket, key


def _prefix(value: str) -> str:
    """A listing or deletion prefix: any key start, but nothing check_key would refuse in a key."""
    return check_key(value + "x")[:-1] if value else ""


# --- signatures ---------------------------------------------------------------------------------------


def _signed_text(method: str, tenant: str, bucket: str, key: str, expires: int, content_type: str) -> bytes:
    # Fields cannot contain "\n" (keys and content types refuse control characters): the join is unambiguous.
    return "\n".join((method, tenant, bucket, key, str(expires), content_type)).encode()


def sign(secret: bytes, method: str, tenant: str, bucket: str, key: str, expires: int, ct: str = "") -> str:
    text = _signed_text(method, tenant, bucket, key, expires, ct if method == "PUT" else "")
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def verify(secret: bytes, sig: storage_pb2.UrlSignature, method: str, now: float | None = None) -> None:
    """PermissionDenied unless `sig` is a valid, unexpired signature for `method` on its object."""
    if sig.method != method:
        raise PermissionDenied(f"this URL was signed for {sig.method or 'nothing'}, not {method}")
    expected = sign(secret, sig.method, sig.tenant, sig.bucket, sig.key, sig.expires, sig.content_type)
    if not hmac.compare_digest(expected, sig.signature):
        raise PermissionDenied("invalid URL signature")
    if sig.expires < (time.time() if now is None else now):
        raise PermissionDenied("the signed URL has expired")


def url_secret(settings: Settings) -> bytes:
    if settings.storage_url_secret:
        return settings.storage_url_secret.encode()
    return create_once(settings.data_dir / "storage" / "url-secret", lambda: secrets.token_bytes(32))


# --- messages -----------------------------------------------------------------------------------------


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def object_message(bucket: str, info: ObjectInfo) -> storage_pb2.ObjectInfo:
    return storage_pb2.ObjectInfo(
        path=f"{bucket}/{info.key}",
        key=info.key,
        size=info.size,
        etag=info.etag,
        content_type=info.content_type,
        last_modified=_timestamp(info.last_modified),
    )


def _bucket_message(info: BucketInfo) -> storage_pb2.Bucket:
    return storage_pb2.Bucket(name=info.name, created_at=_timestamp(info.created_at))


def _audit(target: str, **extra: Any) -> None:
    current_call().audit.update(target=target, **extra)


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    def __init__(self, store: ObjectStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._secret = url_secret(settings)

    def _physical(self, bucket: str) -> tuple[str, str]:
        tenant = current_principal().tenant
        return tenant, physical_bucket(tenant, bucket)

    async def ListBuckets(self, request: Any, context: Any) -> storage_pb2.ListBucketsResponse:
        buckets = tenant_buckets(current_principal().tenant, await self._store.list_buckets())
        mode = "live" if self._store.mode is Mode.LIVE else "embedded"
        return storage_pb2.ListBucketsResponse(buckets=[_bucket_message(b) for b in buckets], mode=mode)

    async def CreateBucket(self, request: Any, context: Any) -> storage_pb2.CreateBucketResponse:
        _audit(request.name)
        _, physical = self._physical(request.name)
        info = await self._store.create_bucket(physical)
        return storage_pb2.CreateBucketResponse(
            bucket=_bucket_message(BucketInfo(request.name, info.created_at))
        )

    async def ListObjects(self, request: Any, context: Any) -> storage_pb2.ListObjectsResponse:
        _, physical = self._physical(request.bucket)
        page = await self._store.list(
            physical, _prefix(request.prefix), request.page_size, request.page_token
        )
        return storage_pb2.ListObjectsResponse(
            objects=[object_message(request.bucket, info) for info in page.objects],
            next_page_token=page.next_page_token,
        )

    async def CreateSignedUrl(self, request: Any, context: Any) -> storage_pb2.CreateSignedUrlResponse:
        method = request.method.upper() or "GET"
        if method not in _METHODS:
            raise InvalidArgument(f"method must be GET or PUT, not {request.method[:10]!r}", field="method")
        if method == "PUT" and not current_principal().can_write:
            raise PermissionDenied("viewers may not upload")
        expires_in = request.expires_in or DEFAULT_EXPIRES_S
        if not 0 < expires_in <= MAX_EXPIRES_S:
            raise InvalidArgument(f"expires_in must be 1..{MAX_EXPIRES_S} seconds", field="expires_in")
        bucket, key = split_path(request.path)
        check_key(key)
        content_type = check_content_type(request.content_type) if method == "PUT" else ""
        tenant, physical = self._physical(bucket)
        _audit(request.path, method=method)
        if not await self._store.bucket_exists(physical):
            raise InvalidArgument(f"bucket {bucket!r} does not exist", field="path")
        expires = int(time.time()) + expires_in
        if self._store.mode is Mode.LIVE:
            url = await self._store.presign(physical, key, method, expires_in, content_type)
        else:
            url = self._edge_url(method, tenant, bucket, key, expires, content_type)
        headers = {"Content-Type": content_type} if content_type else {}
        return storage_pb2.CreateSignedUrlResponse(
            url=url, method=method, expires_at=Timestamp(seconds=expires), headers=headers
        )

    def _edge_url(self, method: str, tenant: str, bucket: str, key: str, expires: int, ct: str) -> str:
        query = {"tenant": tenant, "method": method, "expires": str(expires)}
        if ct:
            query["ct"] = ct
        query["sig"] = sign(self._secret, method, tenant, bucket, key, expires, ct)
        path = f"{OBJECT_ROUTE}/{quote(bucket, safe='')}/{quote(key, safe='/')}"
        return f"{self._settings.public_url}{path}?{urlencode(query)}"

    async def DeleteObject(self, request: Any, context: Any) -> storage_pb2.DeleteObjectResponse:
        _audit(request.path)
        bucket, key = split_path(request.path)
        _, physical = self._physical(bucket)
        return storage_pb2.DeleteObjectResponse(deleted=await self._store.delete(physical, check_key(key)))

    async def DeleteObjects(self, request: Any, context: Any) -> storage_pb2.DeleteObjectsResponse:
        _audit(request.prefix)
        bucket, _, prefix = request.prefix.partition("/")
        _, physical = self._physical(bucket)
        deleted = await self._store.delete_prefix(physical, _prefix(prefix))
        current_call().audit["deleted"] = deleted
        return storage_pb2.DeleteObjectsResponse(deleted=deleted)

    def _verified(self, sig: storage_pb2.UrlSignature, method: str) -> str:
        """The physical bucket a verified signed URL names (the tenant comes from the signed URL)."""
        current_call().audit.update(target=f"{sig.bucket}/{sig.key}", tenant=sig.tenant, method=method)
        verify(self._secret, sig, method)
        check_key(sig.key)
        return physical_bucket(sig.tenant, sig.bucket)

    async def ReadObject(self, request: Any, context: Any) -> AsyncIterator[storage_pb2.ReadObjectResponse]:
        sig = request.signature
        physical = self._verified(sig, "GET")
        info, chunks = await self._store.read_stream(physical, sig.key)
        first = True
        async for chunk in chunks:
            if first:
                yield storage_pb2.ReadObjectResponse(data=chunk, info=object_message(sig.bucket, info))
                first = False
            else:
                yield storage_pb2.ReadObjectResponse(data=chunk)
        if first:  # an empty object: still one message, with the info
            yield storage_pb2.ReadObjectResponse(info=object_message(sig.bucket, info))

    async def WriteObject(self, request_iterator: Any, context: Any) -> storage_pb2.WriteObjectResponse:
        stream = aiter(request_iterator)
        first = await anext(stream, None)
        if first is None or not first.HasField("signature"):
            raise InvalidArgument("the first message must carry the signed URL's parameters")
        sig = first.signature
        physical = self._verified(sig, "PUT")

        async def chunks() -> AsyncIterator[bytes]:
            if first.data:
                yield first.data
            async for message in stream:
                yield message.data

        info = await self._store.write_stream(
            physical, sig.key, chunks(), sig.content_type, self._settings.max_upload_bytes
        )
        current_call().audit["size"] = info.size
        return storage_pb2.WriteObjectResponse(object=object_message(sig.bucket, info))


async def build(runtime: Runtime) -> list[ServiceSpec]:
    store = await open_object_store(runtime.settings, runtime.deps)
    runtime.closers.append(store.close)
    servicer = StorageServicer(store, runtime.settings)
    descriptor = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]
    return [ServiceSpec(descriptor, servicer, storage_pb2_grpc.add_StorageServiceServicer_to_server)]
