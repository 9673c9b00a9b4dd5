"""The live object store: S3 through the minio SDK, every blocking SDK call in a thread pool."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from services.core.blocking import Blocking
from services.core.config import Settings
from services.core.deps import Mode
from services.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.core.objects import (
    DEFAULT_CONTENT_TYPE,
    OWNER_HEADER,
    BucketInfo,
    ObjectInfo,
    ObjectPage,
    Upload,
    check_bucket,
    check_content_type,
    check_key,
    decode_metadata,
    page_size_of,
    page_token_after,
    page_token_key,
)
from services.core.sigv4 import presign_v4


def _s3_error(exc: Exception, bucket: str, key: str = "") -> ServiceError:
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return NotFound(f"object {bucket}/{key} does not exist", path=f"{bucket}/{key}")
        if exc.code == "NoSuchBucket":
            return NotFound(f"bucket {bucket!r} does not exist", bucket=bucket)
        if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return AlreadyExists(f"bucket {bucket!r} already exists", bucket=bucket)
        if exc.code in ("InvalidBucketName", "InvalidObjectName", "KeyTooLongError"):
            return InvalidArgument(f"S3 refused the name: {exc.message}")
        return Unavailable(f"S3 error {exc.code}: {exc.message}")
    return Unavailable(f"S3 not answering: {type(exc).__name__}")


def _metadata(headers: Mapping[str, str], name: str) -> str | None:
    for header, value in headers.items():
        if header.lower() == name:
            return decode_metadata(value)
    return None


class S3Store:
    """The minio SDK against MINIO_ENDPOINT; every SDK call is blocking and runs in the "s3" pool."""

    mode = Mode.LIVE

    def __init__(self, settings: Settings) -> None:
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3.0, read=30.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            maxsize=8,
        )
        # A fixed region: otherwise the SDK asks the server for the bucket's location before presigning.
        self.client = Minio(
            settings.storage.endpoint,
            access_key=settings.storage.access_key,
            secret_key=settings.storage.secret_key.reveal(),
            secure=settings.storage.secure,
            region="us-east-1",
            http_client=http,
        )
        self.endpoint = settings.storage.endpoint
        self._settings = settings
        self._pool = Blocking("s3", 8)

    async def _run(self, bucket: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._pool.run(fn, *args, **kwargs)
        except ServiceError:
            raise
        except Exception as exc:
            raise _s3_error(exc, bucket, key) from exc

    async def ping(self) -> None:
        await self._pool.run(self.client.list_buckets)

    async def bucket_exists(self, name: str) -> bool:
        return bool(await self._run(name, "", self.client.bucket_exists, check_bucket(name)))

    async def create_bucket(self, name: str) -> BucketInfo:
        if await self.bucket_exists(name):
            raise AlreadyExists(f"bucket {name!r} already exists", bucket=name)
        await self._run(name, "", self.client.make_bucket, name)
        return BucketInfo(name, datetime.now(UTC))

    async def ensure_bucket(self, name: str) -> BucketInfo:
        try:
            return await self.create_bucket(name)
        except AlreadyExists:
            found = [b for b in await self.list_buckets() if b.name == name]
            return found[0] if found else BucketInfo(name, datetime.now(UTC))

    async def list_buckets(self) -> list[BucketInfo]:
        buckets = await self._run("", "", self.client.list_buckets)
        return sorted(
            (BucketInfo(b.name, b.creation_date or datetime.now(UTC)) for b in buckets), key=lambda b: b.name
        )

    async def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo:
        check_bucket(bucket), check_key(key), check_content_type(content_type)
        content_type = content_type or DEFAULT_CONTENT_TYPE
        result = await self._run(
            bucket, key, self.client.put_object, bucket, key, io.BytesIO(data), len(data), content_type
        )
        return ObjectInfo(key, len(data), result.etag or "", content_type, datetime.now(UTC))

    def _get(self, bucket: str, key: str) -> bytes:
        response = self.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    async def get(self, bucket: str, key: str) -> bytes:
        check_bucket(bucket), check_key(key)
        return await self._run(bucket, key, self._get, bucket, key)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        check_bucket(bucket), check_key(key)
        stat = await self._run(bucket, key, self.client.stat_object, bucket, key)
        return ObjectInfo(
            key,
            stat.size or 0,
            stat.etag or "",
            stat.content_type or "",
            stat.last_modified or datetime.now(UTC),
            _metadata(stat.metadata or {}, OWNER_HEADER),
        )

    async def details(self, bucket: str, infos: list[ObjectInfo]) -> list[ObjectInfo]:
        """Listed objects with content type and owner (S3 listings carry neither): one HEAD per object, in
        parallel on the pool; an object deleted since the listing is left out."""

        async def detailed(info: ObjectInfo) -> ObjectInfo | None:
            if info.detailed:
                return info
            try:
                return await self.stat(bucket, info.key)
            except NotFound:
                return None

        found = await asyncio.gather(*(detailed(info) for info in infos))
        return [info for info in found if info is not None]

    async def delete_keys(self, bucket: str, keys: list[str]) -> int:
        for key in keys:
            await self._run(bucket, key, self.client.remove_object, bucket, key)
        return len(keys)

    async def delete(self, bucket: str, key: str) -> bool:
        try:
            await self.stat(bucket, key)  # S3 deletes are idempotent: this is how we know it existed
        except NotFound:
            return False
        await self._run(bucket, key, self.client.remove_object, bucket, key)
        return True

    def _list(self, bucket: str, prefix: str, page_size: int, after: str) -> ObjectPage:
        found = self.client.list_objects(
            bucket, prefix=prefix or None, recursive=True, start_after=after or None
        )
        infos: list[ObjectInfo] = []
        size = page_size_of(page_size)
        for item in found:
            if len(infos) == size:
                return ObjectPage(infos, page_token_after(infos[-1].key))
            infos.append(
                ObjectInfo(
                    item.object_name or "",
                    item.size or 0,
                    (item.etag or "").strip('"'),
                    item.content_type or "",
                    item.last_modified or datetime.now(UTC),
                    detailed=False,
                )
            )
        return ObjectPage(infos, "")

    async def list(
        self, bucket: str, prefix: str = "", page_size: int = 100, page_token: str = ""
    ) -> ObjectPage:
        check_bucket(bucket)
        after = page_token_key(page_token) if page_token else ""
        return await self._run(bucket, "", self._list, bucket, prefix, page_size, after)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        deleted, token = 0, ""
        while True:
            page = await self.list(bucket, prefix, 1000, token)
            for info in page.objects:
                await self._run(bucket, info.key, self.client.remove_object, bucket, info.key)
                deleted += 1
            if not page.next_page_token:
                return deleted
            token = page.next_page_token

    async def presign(
        self, bucket: str, key: str, method: str, expires_s: int, content_type: str = ""
    ) -> str:
        """The SDK's own presigned URL (SigV4 in the query string); signing is local, no network call."""
        check_bucket(bucket), check_key(key)
        return await self._run(
            bucket, key, self.client.get_presigned_url, method, bucket, key, timedelta(seconds=expires_s)
        )

    async def presign_put(self, bucket: str, key: str, expires_s: int, headers: Mapping[str, str]) -> str:
        """A presigned PUT that pins `headers` (content type, owner metadata, a precondition): SeaweedFS and
        AWS check every signed header, and SeaweedFS refuses any x-amz-* header that is not signed."""
        check_bucket(bucket), check_key(key)
        return presign_v4(
            method="PUT",
            endpoint=self.endpoint,
            secure=self._settings.storage.secure,
            bucket=bucket,
            key=key,
            expires_s=expires_s,
            headers=headers,
            access_key=self._settings.storage.access_key,
            secret_key=self._settings.storage.secret_key.reveal(),
            region="us-east-1",
        )

    async def write_stream(
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], upload: Upload
    ) -> ObjectInfo:
        raise FailedPrecondition("live storage: upload with the presigned S3 URL, not through the edge")

    async def read_stream(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        raise FailedPrecondition("live storage: download with the presigned S3 URL, not through the edge")

    async def close(self) -> None:
        self._pool.shutdown()
        self.client._http.clear()
