"""StorageService over gRPC: a tenant's buckets and objects on the object store (live S3 or embedded folder).

Names (a tenant's buckets, object paths) are in names.py; signed URLs and sealed page tokens in signing.py.

Policies (services/storage/policies.py) decide every call of a governed caller: listings show only objects it
may read, signed URLs and deletes are refused when it may not read or write the object. On governed storage an
upload URL also pins the object as it was when signed (absent, or its ETag): it cannot overwrite an object
that appeared or changed since, so it is good for one upload; ask for a new URL to upload again.

ProbePolicies (internal: auth's live dry run) decides a bucket's objects for a given subject under a given
policy set with the same Gate (gate_with), reading only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from launchpad.api.v1 import options_pb2
from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import Settings
from services.core.context import current_call, current_principal
from services.core.deps import Mode
from services.core.errors import InvalidArgument, NotFound, PermissionDenied
from services.core.objects import (
    ABSENT,
    DEFAULT_CONTENT_TYPE,
    OWNER_HEADER,
    BucketInfo,
    ObjectInfo,
    ObjectStore,
    Upload,
    check_content_type,
    check_key,
    check_owner,
    encode_metadata,
    page_size_of,
    page_token_after,
)
from services.core.objectstore import open_object_store
from services.core.policy import compile_set
from services.core.policy.access import subject_writes
from services.core.policy.book import open_policy_book
from services.core.server import Runtime, ServiceSpec
from services.core.structs import dict_to_struct
from services.core.structs import struct_to_dict as plain
from services.storage.names import key_prefix, physical_bucket, split_path, tenant_buckets
from services.storage.policies import (
    READ,
    WRITE,
    Gate,
    PolicySource,
    gate_for,
    gate_with,
    object_record,
    upload_record,
)
from services.storage.signing import Grant, open_token, seal_token, sign, url_secret, verify

DEFAULT_EXPIRES_S = 900
MAX_EXPIRES_S = 7 * 24 * 3600  # S3's limit for SigV4 presigned URLs


def _object_route() -> str:
    """The path prefix the edge serves objects under, read from the contract's byte_stream rule."""
    service = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]
    path = service.methods_by_name["ReadObject"].GetOptions().Extensions[options_pb2.byte_stream].path
    prefix, sep, rest = path.partition("/{bucket}/")
    if not sep or rest != "{key=**}":
        raise RuntimeError(f"ReadObject's byte_stream path must end in /{{bucket}}/{{key=**}}, got {path!r}")
    return prefix


OBJECT_ROUTE = _object_route()
_METHODS = ("GET", "PUT")
# A governed listing reads at most this many store pages per call to fill a page with objects the caller may
# read; then it answers with what it found (possibly fewer than page_size, even none) and a token to go on.
MAX_SCAN_PAGES = 10
DELETE_PAGE = 1000
DEFAULT_PROBE_LIMIT, MAX_PROBE_LIMIT = 100, 1000  # objects a live dry run looks at


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
    def __init__(self, store: ObjectStore, settings: Settings, book: PolicySource) -> None:
        self._store = store
        self._settings = settings
        self._secret = url_secret(settings)
        self._book = book

    def _physical(self, bucket: str) -> tuple[str, str]:
        tenant = current_principal().tenant
        return tenant, physical_bucket(tenant, bucket)

    async def _gate(self, bucket: str) -> Gate:
        return await gate_for(self._book, current_principal(), bucket)

    async def _existing(self, physical: str, key: str) -> ObjectInfo | None:
        """The object at `key` with its owner and content type, or None; a missing bucket still raises."""
        try:
            return await self._store.stat(physical, key)
        except NotFound as exc:
            if "bucket" in exc.details:
                raise
            return None

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
        prefix = key_prefix(request.prefix)
        gate = await self._gate(request.bucket)
        if gate.governed:
            objects, token = await self._readable_page(gate, physical, prefix, request)
            token = seal_token(self._secret, physical, token)
        else:
            page = await self._store.list(physical, prefix, request.page_size, request.page_token)
            objects, token = page.objects, page.next_page_token
        return storage_pb2.ListObjectsResponse(
            objects=[object_message(request.bucket, info) for info in objects], next_page_token=token
        )

    async def _readable_page(
        self, gate: Gate, physical: str, prefix: str, request: Any
    ) -> tuple[list[ObjectInfo], str]:
        """Up to page_size objects the caller may read, in key order, and the token after the last object
        looked at (shown or not), so paging on never skips one. Reads at most MAX_SCAN_PAGES store pages: a
        page may come back shorter than page_size, even empty, with a token to go on."""
        size = page_size_of(request.page_size)
        shown: list[ObjectInfo] = []
        token = open_token(self._secret, physical, request.page_token)
        for _ in range(MAX_SCAN_PAGES):
            page = await self._store.list(physical, prefix, size, token)
            infos = await self._store.details(physical, page.objects) if gate.needs_details else page.objects
            readable = [info for info in infos if gate.allows("read", info)]
            room = size - len(shown)
            if len(readable) > room:  # more than fit: go on right after the last one shown
                shown += readable[:room]
                return shown, page_token_after(shown[-1].key)
            shown += readable
            token = page.next_page_token
            if not token or len(shown) == size:
                break
        return shown, token

    async def CreateSignedUrl(self, request: Any, context: Any) -> storage_pb2.CreateSignedUrlResponse:
        method = request.method.upper() or "GET"
        if method not in _METHODS:
            raise InvalidArgument(f"method must be GET or PUT, not {request.method[:10]!r}", field="method")
        principal = current_principal()
        if method == "PUT" and not principal.can_write:  # roles first: no policy lets a viewer upload
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
        gate = await self._gate(bucket)
        existing = await self._existing(physical, key) if gate.governed else None
        expires = int(time.time()) + expires_in
        if method == "GET":
            gate.require("read", key, existing)
            url, headers = await self._download_url(tenant, bucket, physical, key, expires, expires_in)
        else:
            owner = check_owner(principal.subject)
            stored_type = content_type or DEFAULT_CONTENT_TYPE
            gate.require_upload(key, upload_record(bucket, key, stored_type, owner), existing)
            # Governed: the upload must find the object as decided now (absent, or this very one).
            expect = (existing.etag if existing else ABSENT) if gate.governed else None
            grant = Grant(owner, expect)
            url, headers = await self._upload_url(
                tenant, bucket, physical, key, (expires, expires_in), content_type, grant
            )
        if gate.governed:
            current_call().audit["governed"] = True
        return storage_pb2.CreateSignedUrlResponse(
            url=url, method=method, expires_at=Timestamp(seconds=expires), headers=headers
        )

    async def _download_url(
        self, tenant: str, bucket: str, physical: str, key: str, expires: int, expires_in: int
    ) -> tuple[str, dict[str, str]]:
        if self._store.mode is Mode.LIVE:
            return await self._store.presign(physical, key, "GET", expires_in), {}
        return self._edge_url("GET", tenant, bucket, key, expires, "", None), {}

    async def _upload_url(
        self,
        tenant: str,
        bucket: str,
        physical: str,
        key: str,
        expiry: tuple[int, int],  # (epoch seconds, seconds from now)
        ct: str,
        grant: Grant,
    ) -> tuple[str, dict[str, str]]:
        """Embedded: the edge URL (the grant inside its signature). Live: a presigned PUT whose signed headers
        pin the content type, the owner and the precondition; the client sends them as returned."""
        expires, expires_in = expiry
        if self._store.mode is not Mode.LIVE:
            url = self._edge_url("PUT", tenant, bucket, key, expires, ct, grant)
            return url, ({"Content-Type": ct} if ct else {})
        headers = {"Content-Type": ct or DEFAULT_CONTENT_TYPE, OWNER_HEADER: encode_metadata(grant.owner)}
        if grant.expect == ABSENT:
            headers["If-None-Match"] = "*"
        elif grant.expect is not None:
            headers["If-Match"] = f'"{grant.expect}"'
        url = await self._store.presign_put(physical, key, expires_in, headers)
        return url, headers

    def _edge_url(
        self, method: str, tenant: str, bucket: str, key: str, expires: int, ct: str, grant: Grant | None
    ) -> str:
        query = {"tenant": tenant, "method": method, "expires": str(expires)}
        if ct:
            query["ct"] = ct
        query["sig"] = sign(self._secret, method, tenant, bucket, key, expires, ct, grant)
        path = f"{OBJECT_ROUTE}/{quote(bucket, safe='')}/{quote(key, safe='/')}"
        return f"{self._settings.edge.public_url}{path}?{urlencode(query)}"

    async def DeleteObject(self, request: Any, context: Any) -> storage_pb2.DeleteObjectResponse:
        _audit(request.path)
        bucket, key = split_path(request.path)
        _, physical = self._physical(bucket)
        check_key(key)
        gate = await self._gate(bucket)
        if gate.governed:
            current_call().audit["governed"] = True
            existing = await self._existing(physical, key)
            gate.require("write", key, existing)
            if existing is None:
                return storage_pb2.DeleteObjectResponse(deleted=False)
        return storage_pb2.DeleteObjectResponse(deleted=await self._store.delete(physical, key))

    async def DeleteObjects(self, request: Any, context: Any) -> storage_pb2.DeleteObjectsResponse:
        """Deletes what the caller may write under the prefix. On governed storage the other objects stay
        untouched and unreported: counting them would tell the caller about objects it may not see."""
        _audit(request.prefix)
        bucket, _, prefix = request.prefix.partition("/")
        _, physical = self._physical(bucket)
        gate = await self._gate(bucket)
        if not gate.governed:
            deleted = await self._store.delete_prefix(physical, key_prefix(prefix))
        else:
            deleted, kept = await self._delete_writable(gate, physical, key_prefix(prefix))
            current_call().audit.update(governed=True, kept=kept)
        current_call().audit["deleted"] = deleted
        return storage_pb2.DeleteObjectsResponse(deleted=deleted)

    async def _delete_writable(self, gate: Gate, physical: str, prefix: str) -> tuple[int, int]:
        deleted = kept = 0
        token = ""
        while True:
            page = await self._store.list(physical, prefix, DELETE_PAGE, token)
            infos = await self._store.details(physical, page.objects) if gate.needs_details else page.objects
            writable = [info.key for info in infos if gate.allows("write", info)]
            kept += len(infos) - len(writable)
            deleted += await self._store.delete_keys(physical, writable)
            if not (token := page.next_page_token):
                return deleted, kept

    def _verified(self, sig: storage_pb2.UrlSignature, method: str) -> tuple[str, Grant | None]:
        """The physical bucket a verified signed URL names (the tenant comes from the signed URL) and, for
        an upload, its grant."""
        current_call().audit.update(target=f"{sig.bucket}/{sig.key}", tenant=sig.tenant, method=method)
        grant = verify(self._secret, sig, method)
        check_key(sig.key)
        return physical_bucket(sig.tenant, sig.bucket), grant

    async def ReadObject(self, request: Any, context: Any) -> AsyncIterator[storage_pb2.ReadObjectResponse]:
        sig = request.signature
        physical, _ = self._verified(sig, "GET")
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
        physical, grant = self._verified(sig, "PUT")
        assert grant is not None  # verify() refuses an upload URL without one

        async def chunks() -> AsyncIterator[bytes]:
            if first.data:
                yield first.data
            async for message in stream:
                yield message.data

        upload = Upload(sig.content_type, self._settings.storage.max_upload_bytes, grant.owner, grant.expect)
        info = await self._store.write_stream(physical, sig.key, chunks(), upload)
        current_call().audit.update(size=info.size, owner=grant.owner)
        return storage_pb2.WriteObjectResponse(object=object_message(sig.bucket, info))

    async def ProbePolicies(self, request: Any, context: Any) -> storage_pb2.ProbePoliciesResponse:
        """Internal (auth's live dry run): the bucket's first `limit` objects as ListObjects lists them for
        an admin, each decided for the request's subject under the request's policies by the very Gate the
        other calls enforce with (record, details, roles, admins ungoverned). Reads only."""
        tenant, bucket = request.tenant, request.bucket
        _audit(f"{bucket}", tenant=tenant, probe=True)
        physical = physical_bucket(tenant, bucket)
        limit = probe_limit(request.limit)
        policies = compile_set([plain(policy) for policy in request.policies])
        subject = plain(request.subject)
        if not await self._store.bucket_exists(physical):
            raise InvalidArgument(f"bucket {bucket!r} does not exist in tenant {tenant!r}", field="bucket")
        gate = gate_with(policies, subject, bucket)
        writes = subject_writes(subject)
        page = await self._store.list(physical, "", limit, "")
        infos = await self._store.details(physical, page.objects) if gate.needs_details else page.objects
        objects = [
            storage_pb2.ProbedObject(
                record=dict_to_struct(object_record(bucket, info)),
                read=gate.allows(READ, info),
                write=writes and gate.allows(WRITE, info),
            )
            for info in infos
        ]
        current_call().audit.update(governed=gate.governed, objects=len(objects))
        return storage_pb2.ProbePoliciesResponse(
            governed=gate.governed, objects=objects, truncated=bool(page.next_page_token)
        )


def probe_limit(limit: int) -> int:
    if limit == 0:
        return DEFAULT_PROBE_LIMIT
    if not 1 <= limit <= MAX_PROBE_LIMIT:
        raise InvalidArgument(
            f"limit must be 1..{MAX_PROBE_LIMIT} (0 means {DEFAULT_PROBE_LIMIT}), not {limit}", field="limit"
        )
    return limit


async def build(runtime: Runtime, book: PolicySource | None = None) -> list[ServiceSpec]:
    """The storage service; `book` defaults to the platform database's policy book (tests pass their own)."""
    if book is None:
        book = await open_policy_book(runtime)
    store = await open_object_store(runtime.settings, runtime.deps)
    runtime.closers.append(store.close)
    servicer = StorageServicer(store, runtime.settings, book)
    descriptor = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]
    return [ServiceSpec(descriptor, servicer, storage_pb2_grpc.add_StorageServiceServicer_to_server)]
