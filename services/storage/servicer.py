"""StorageService over gRPC: a tenant's buckets and objects on the object store (live S3 or embedded folder).

Tenants see only their own buckets: the tenant's bucket "photos" is the physical bucket "<tenant>.photos"
(underscores of the tenant name become hyphens). A dot separates them because neither a tenant slug nor a
tenant's bucket name can contain one, so no (tenant, name) pair can land on another tenant's physical bucket
-- "<tenant>-photos" would let tenant "a" bucket "b-c" collide with tenant "a_b" bucket "c".

Embedded signed URLs point at the edge and carry an HMAC-SHA256 over method, tenant, bucket, key, expiry and,
for uploads, content type, owner (the signer's sub) and precondition; ReadObject/WriteObject verify it. An
upload's owner and precondition travel inside the `sig` parameter (`<hmac>.<base64url JSON [owner, expect]>`):
the edge passes `sig` through untouched, so no edge or proto change was needed to carry them. Live signed URLs
are S3's own: downloads the SDK's, uploads ours with Content-Type and x-amz-meta-owner (and, on governed
storage, If-None-Match / If-Match) among the signed headers, which the uploader must send as given.

Policies (services/storage/policies.py) decide every call of a governed caller: listings show only objects it
may read, signed URLs and deletes are refused when it may not read or write the object. On governed storage an
upload URL also pins the object as it was when signed (absent, or its ETag): it cannot overwrite an object
that appeared or changed since, so it is good for one upload; ask for a new URL to upload again.

ProbePolicies (internal: auth's live dry run) decides a bucket's objects for a given subject under a given
policy set with the same Gate (gate_with), reading only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import Settings
from services.core.context import TENANT_NAME, current_call, current_principal
from services.core.deps import Mode
from services.core.errors import InvalidArgument, NotFound, PermissionDenied
from services.core.files import create_once
from services.core.objectstore import (
    ABSENT,
    DEFAULT_CONTENT_TYPE,
    OWNER_HEADER,
    BucketInfo,
    ObjectInfo,
    ObjectStore,
    check_bucket,
    check_content_type,
    check_key,
    check_owner,
    encode_metadata,
    open_object_store,
    page_size_of,
    page_token_after,
)
from services.core.policy import compile_set
from services.core.policy.access import subject_writes
from services.core.policy.book import open_policy_book
from services.core.server import Runtime, ServiceSpec
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

DEFAULT_EXPIRES_S = 900
MAX_EXPIRES_S = 7 * 24 * 3600  # S3's limit for SigV4 presigned URLs
OBJECT_ROUTE = "/storage/v1/object"
_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_METHODS = ("GET", "PUT")
# A governed listing reads at most this many store pages per call to fill a page with objects the caller may
# read; then it answers with what it found (possibly fewer than page_size, even none) and a token to go on.
MAX_SCAN_PAGES = 10
DELETE_PAGE = 1000
DEFAULT_PROBE_LIMIT, MAX_PROBE_LIMIT = 100, 1000  # objects a live dry run looks at


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


def _signed_text(
    method: str, tenant: str, bucket: str, key: str, expires: int, content_type: str, grant: Grant | None
) -> bytes:
    # Fields cannot contain "\n" (keys, content types and owners refuse control characters; `expect` is "*",
    # an ETag or empty): the join is unambiguous.
    fields = [method, tenant, bucket, key, str(expires), content_type]
    if grant is not None:
        fields += [grant.owner, grant.expect or ""]
    return "\n".join(fields).encode()


@dataclass(frozen=True, slots=True)
class Grant:
    """What an upload URL grants beyond its object: the owner the upload records and its precondition
    (None: none; ABSENT: no object may be there; else the ETag of the object that must still be there)."""

    owner: str
    expect: str | None = None

    def packed(self) -> str:
        return base64.urlsafe_b64encode(orjson.dumps([self.owner, self.expect or ""])).decode().rstrip("=")

    @staticmethod
    def unpacked(text: str) -> Grant:
        try:
            owner, expect = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, TypeError, binascii.Error):
            raise PermissionDenied("invalid URL signature") from None
        if not isinstance(owner, str) or not owner or not isinstance(expect, str):
            raise PermissionDenied("invalid URL signature")
        return Grant(owner, expect or None)


def sign(
    secret: bytes,
    method: str,
    tenant: str,
    bucket: str,
    key: str,
    expires: int,
    ct: str = "",
    grant: Grant | None = None,
) -> str:
    """The URL's `sig`: the HMAC, and for uploads the grant it covers (`<hmac>.<grant>`)."""
    upload = method == "PUT"
    text = _signed_text(method, tenant, bucket, key, expires, ct if upload else "", grant if upload else None)
    mac = hmac.new(secret, text, hashlib.sha256).hexdigest()
    return f"{mac}.{grant.packed()}" if upload and grant is not None else mac


def verify(
    secret: bytes, sig: storage_pb2.UrlSignature, method: str, now: float | None = None
) -> Grant | None:
    """PermissionDenied unless `sig` is a valid, unexpired signature for `method` on its object; an upload's
    grant (owner, precondition) when it verifies."""
    if sig.method != method:
        raise PermissionDenied(f"this URL was signed for {sig.method or 'nothing'}, not {method}")
    grant = None
    if sig.method == "PUT":
        _, dot, packed = sig.signature.partition(".")
        if not dot:
            raise PermissionDenied(
                "this upload URL records no owner (an older URL): ask for a new upload URL"
            )
        grant = Grant.unpacked(packed)
    expected = sign(secret, sig.method, sig.tenant, sig.bucket, sig.key, sig.expires, sig.content_type, grant)
    if not hmac.compare_digest(expected.encode(), sig.signature.encode()):
        raise PermissionDenied("invalid URL signature")
    if sig.expires < (time.time() if now is None else now):
        raise PermissionDenied("the signed URL has expired")
    return grant


# A governed listing's page token names the last key looked at, which may be one the caller may not read:
# it goes out sealed (AES-GCM, bound to the bucket), so it says nothing but "go on from here".
_TOKEN_KEY_LABEL = b"launchpad-storage-page-token"


def _token_cipher(secret: bytes) -> AESGCM:
    return AESGCM(hmac.new(secret, _TOKEN_KEY_LABEL, hashlib.sha256).digest())


def seal_token(secret: bytes, bucket: str, token: str) -> str:
    if not token:
        return ""
    nonce = secrets.token_bytes(12)
    sealed = nonce + _token_cipher(secret).encrypt(nonce, token.encode(), bucket.encode())
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_token(secret: bytes, bucket: str, sealed: str) -> str:
    if not sealed:
        return ""
    try:
        raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        return _token_cipher(secret).decrypt(raw[:12], raw[12:], bucket.encode()).decode()
    except (ValueError, InvalidTag):
        raise InvalidArgument(
            "page_token is not one this listing gave out: list again without it", field="page_token"
        ) from None


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
        prefix = _prefix(request.prefix)
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
        return f"{self._settings.public_url}{path}?{urlencode(query)}"

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
            deleted = await self._store.delete_prefix(physical, _prefix(prefix))
        else:
            deleted, kept = await self._delete_writable(gate, physical, _prefix(prefix))
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

        info = await self._store.write_stream(
            physical,
            sig.key,
            chunks(),
            sig.content_type,
            self._settings.max_upload_bytes,
            owner=grant.owner,
            expect=grant.expect,
        )
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
                record=_struct(object_record(bucket, info)),
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


def plain(struct: Struct) -> dict[str, Any]:
    """A Struct as plain JSON; whole numbers as ints (a Struct keeps every number as a double)."""
    return _whole(json_format.MessageToDict(struct))


def _whole(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole(item) for item in value]
    return value


def _struct(value: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(value)
    return struct


async def build(runtime: Runtime, book: PolicySource | None = None) -> list[ServiceSpec]:
    """The storage service; `book` defaults to the platform database's policy book (tests pass their own)."""
    if book is None:
        book = await open_policy_book(runtime)
    store = await open_object_store(runtime.settings, runtime.deps)
    runtime.closers.append(store.close)
    servicer = StorageServicer(store, runtime.settings, book)
    descriptor = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]
    return [ServiceSpec(descriptor, servicer, storage_pb2_grpc.add_StorageServiceServicer_to_server)]
