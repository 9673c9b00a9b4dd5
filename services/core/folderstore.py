"""The embedded object store: buckets as folders in the data dir.

Embedded layout: data_dir/buckets/<bucket>/bucket.json and objects/<sha256(key)>, one file per object: a fixed
4 KiB JSON header (key, size, etag, content type, time, owner) then the bytes. An object is written to a temporary
name and committed by os.replace, so a crash mid-upload leaves no partial object -- only a `.tmp-*` file that
is never listed and is swept when the store opens. Hashing the key keeps any valid S3 key (1024 bytes, "a" and
"a/b" side by side) storable on any filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

import orjson

from services.core.blocking import Blocking
from services.core.deps import Mode
from services.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.core.objects import (
    ABSENT,
    DEFAULT_CONTENT_TYPE,
    BucketInfo,
    ObjectInfo,
    ObjectPage,
    TooLarge,
    Upload,
    check_bucket,
    check_content_type,
    check_key,
    check_owner,
    page_size_of,
    page_token_after,
    page_token_key,
    precondition_failed,
)

CHUNK = 256 * 1024
HEADER = 4096  # embedded object header: key (<= 1024 bytes, JSON-escaped at most twice) fits with room
T = TypeVar("T")


async def _settled(work: Awaitable[T]) -> T:
    """Awaits pool work; when cancelled, lets it finish first, so cleanup never races a thread on the file."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


class FolderStore:
    """Buckets as folders in the data dir; file work runs in a small thread pool, never on the event loop."""

    mode = Mode.EMBEDDED

    def __init__(self, root: Path, mode: Mode = Mode.EMBEDDED) -> None:
        self.root = root
        self.mode = mode
        self._pool = Blocking("objects", 4)
        # Held while a precondition is checked and the object replaced, so no other commit slips between.
        self._commit_lock = threading.Lock()

    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / check_bucket(bucket)

    def _object_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(check_key(key).encode("utf-8", "surrogatepass")).hexdigest()
        return self._existing(bucket) / "objects" / digest

    def _existing(self, bucket: str) -> Path:
        path = self._bucket_dir(bucket)
        if not (path / "bucket.json").exists():
            raise NotFound(f"bucket {bucket!r} does not exist", bucket=bucket)
        return path

    def sweep(self) -> None:
        """Removes temporary files left by uploads that a crash interrupted."""
        for temp in self.root.glob("*/objects/.tmp-*"):
            temp.unlink(missing_ok=True)

    # buckets ------------------------------------------------------------------------------------------

    def _create(self, name: str, exist_ok: bool) -> BucketInfo:
        path = self._bucket_dir(name)
        (path / "objects").mkdir(parents=True, exist_ok=True, mode=0o700)
        marker = path / "bucket.json"
        now = datetime.now(UTC)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not exist_ok:
                raise AlreadyExists(f"bucket {name!r} already exists", bucket=name) from None
            return self._bucket_info(name)
        with os.fdopen(fd, "wb") as out:
            out.write(orjson.dumps({"created_at": now.isoformat()}))
        return BucketInfo(name, now)

    def _bucket_info(self, name: str) -> BucketInfo:
        meta = orjson.loads((self.root / name / "bucket.json").read_bytes())
        return BucketInfo(name, datetime.fromisoformat(meta["created_at"]))

    def _buckets(self) -> list[BucketInfo]:
        if not self.root.exists():
            return []
        names = sorted(p.name for p in self.root.iterdir() if (p / "bucket.json").exists())
        return [self._bucket_info(name) for name in names]

    async def ensure_bucket(self, name: str) -> BucketInfo:
        return await self._pool.run(self._create, name, True)

    async def create_bucket(self, name: str) -> BucketInfo:
        return await self._pool.run(self._create, name, False)

    async def bucket_exists(self, name: str) -> bool:
        return (self._bucket_dir(name) / "bucket.json").exists()

    async def list_buckets(self) -> list[BucketInfo]:
        return await self._pool.run(self._buckets)

    # objects ------------------------------------------------------------------------------------------

    def _open_temp(self, bucket: str, key: str) -> tuple[Path, Path, IO[bytes]]:
        final = self._object_path(bucket, key)
        temp = final.with_name(f".tmp-{secrets.token_hex(8)}")
        out = open(temp, "wb")  # noqa: SIM115 -- closed by _commit or _abort
        out.write(b"\0" * HEADER)
        return final, temp, out

    def _commit(self, final: Path, temp: Path, out: IO[bytes], info: ObjectInfo, expect: str | None) -> None:
        fields = {
            "key": info.key,
            "size": info.size,
            "etag": info.etag,
            "content_type": info.content_type,
            "last_modified": info.last_modified.isoformat(),
        }
        if info.owner is not None:
            fields["owner"] = info.owner
        header = orjson.dumps(fields)
        if len(header) > HEADER:  # check_key, check_content_type and check_owner keep it far below
            raise InvalidArgument("object key, content type and owner too long to store together")
        out.seek(0)
        out.write(header.ljust(HEADER, b" "))
        out.flush()
        os.fsync(out.fileno())
        out.close()
        with self._commit_lock:
            if expect is not None and not self._holds(final, expect):
                raise precondition_failed(final.parent.parent.name, info.key)
            os.replace(temp, final)  # the commit point: readers see the old object or the whole new one

    def _holds(self, final: Path, expect: str) -> bool:
        """Whether the object at `final` is what the upload expects: ABSENT, or the one with this ETag."""
        try:
            current = self._read_header(final)
        except FileNotFoundError:
            return expect == ABSENT
        return expect != ABSENT and hmac.compare_digest(current.etag, expect)

    @staticmethod
    def _abort(temp: Path, out: IO[bytes]) -> None:
        out.close()
        temp.unlink(missing_ok=True)

    def _abort_opened(self, opening: asyncio.Future[tuple[Path, Path, IO[bytes]]]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            _, temp, out = opening.result()
            self._abort(temp, out)

    async def write_stream(
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], upload: Upload
    ) -> ObjectInfo:
        """Streams chunks to a temporary file, refusing (and deleting it) once more than max_bytes arrived;
        with `expect`, commits only if the object at the key is still as expected (see _holds)."""
        check_content_type(upload.content_type)
        if upload.owner is not None:
            check_owner(upload.owner)
        opening = asyncio.ensure_future(self._pool.run(self._open_temp, bucket, key))
        try:
            final, temp, out = await asyncio.shield(opening)
        except asyncio.CancelledError:  # cancelled while the pool thread made the file: remove it once made
            opening.add_done_callback(self._abort_opened)
            raise
        digest, size = hashlib.sha256(), 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > upload.max_bytes:
                    raise TooLarge(f"upload larger than {upload.max_bytes} bytes", limit=upload.max_bytes)
                digest.update(chunk)
                await _settled(self._pool.run(out.write, chunk))
            info = ObjectInfo(
                key,
                size,
                digest.hexdigest(),
                upload.content_type or DEFAULT_CONTENT_TYPE,
                datetime.now(UTC),
                upload.owner,
            )
            await self._pool.run(self._commit, final, temp, out, info, upload.expect)
            return info
        except BaseException:
            # Right here, not in the pool: a cancelled upload (client gone) must not leave its temp file.
            self._abort(temp, out)
            raise

    async def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write_stream(bucket, key, one(), Upload(content_type, len(data)))

    @staticmethod
    def _header_info(raw: bytes) -> ObjectInfo:
        meta = orjson.loads(raw.rstrip(b" "))
        return ObjectInfo(
            meta["key"],
            meta["size"],
            meta["etag"],
            meta["content_type"],
            datetime.fromisoformat(meta["last_modified"]),
            meta.get("owner"),
        )

    @classmethod
    def _read_header(cls, path: Path) -> ObjectInfo:
        with open(path, "rb") as f:
            return cls._header_info(f.read(HEADER))

    def _stat(self, bucket: str, key: str) -> ObjectInfo:
        try:
            return self._read_header(self._object_path(bucket, key))
        except FileNotFoundError:
            raise NotFound(f"object {bucket}/{key} does not exist", path=f"{bucket}/{key}") from None

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        return await self._pool.run(self._stat, bucket, key)

    def _open(self, bucket: str, key: str) -> tuple[ObjectInfo, IO[bytes]]:
        try:
            handle = open(self._object_path(bucket, key), "rb")  # noqa: SIM115 -- the reader closes it
        except FileNotFoundError:
            raise NotFound(f"object {bucket}/{key} does not exist", path=f"{bucket}/{key}") from None
        try:
            return self._header_info(handle.read(HEADER)), handle
        except BaseException:
            handle.close()
            raise

    async def read_stream(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        """The object's info and its bytes in chunks; the open handle keeps a concurrent replace harmless."""
        info, handle = await self._pool.run(self._open, bucket, key)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await self._pool.run(handle.read, CHUNK):
                    yield chunk
            finally:
                handle.close()

        return info, chunks()

    async def get(self, bucket: str, key: str) -> bytes:
        _, chunks = await self.read_stream(bucket, key)
        return b"".join([chunk async for chunk in chunks])

    def _delete(self, bucket: str, key: str) -> bool:
        try:
            self._object_path(bucket, key).unlink()
        except FileNotFoundError:
            return False
        return True

    async def delete(self, bucket: str, key: str) -> bool:
        return await self._pool.run(self._delete, bucket, key)

    def _infos(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        for path in (self._existing(bucket) / "objects").iterdir():
            if path.name.startswith(".tmp-"):
                continue
            try:
                info = self._read_header(path)
            except FileNotFoundError:  # deleted while we listed
                continue
            if info.key.startswith(prefix):
                yield info

    def _list(self, bucket: str, prefix: str, page_size: int, page_token: str) -> ObjectPage:
        after = page_token_key(page_token) if page_token else ""
        infos = sorted((i for i in self._infos(bucket, prefix) if i.key > after), key=lambda i: i.key)
        size = page_size_of(page_size)
        page = infos[:size]
        return ObjectPage(page, page_token_after(page[-1].key) if len(infos) > size else "")

    async def list(
        self, bucket: str, prefix: str = "", page_size: int = 100, page_token: str = ""
    ) -> ObjectPage:
        return await self._pool.run(self._list, bucket, prefix, page_size, page_token)

    def _delete_prefix(self, bucket: str, prefix: str) -> int:
        return sum(self._delete(bucket, info.key) for info in list(self._infos(bucket, prefix)))

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        return await self._pool.run(self._delete_prefix, bucket, prefix)

    async def delete_keys(self, bucket: str, keys: list[str]) -> int:
        return await self._pool.run(lambda: sum(self._delete(bucket, key) for key in keys))

    async def details(self, bucket: str, infos: list[ObjectInfo]) -> list[ObjectInfo]:
        return infos  # the header of every listed object carried everything

    async def presign(
        self, bucket: str, key: str, method: str, expires_s: int, content_type: str = ""
    ) -> str:
        raise FailedPrecondition("the embedded store has no presigned URLs: the storage service signs them")

    async def presign_put(self, bucket: str, key: str, expires_s: int, headers: Mapping[str, str]) -> str:
        return await self.presign(bucket, key, "PUT", expires_s)

    async def close(self) -> None:
        self._pool.shutdown()

    async def ping(self) -> None:
        await self._pool.run(self.root.mkdir, parents=True, exist_ok=True)
