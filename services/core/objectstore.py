"""Object storage for every service: live S3 (the minio SDK) or an embedded folder of buckets.

`await open_object_store(settings, deps)` picks the mode by DESIGN section 4 and registers dependency
"objects". Both stores take physical bucket names (S3 rules, checked here) and keys checked by `check_key`.

Embedded layout: data_dir/buckets/<bucket>/bucket.json and objects/<sha256(key)>, one file per object: a fixed
4 KiB JSON header (key, size, etag, content type, time, owner) then the bytes. An object is written to a temporary
name and committed by os.replace, so a crash mid-upload leaves no partial object -- only a `.tmp-*` file that
is never listed and is swept when the store opens. Hashing the key keeps any valid S3 key (1024 bytes, "a" and
"a/b" side by side) storable on any filesystem.

Owners: an object's `owner` is the `sub` that signed its upload URL, kept with the object (embedded: in the
header; S3: user metadata `x-amz-meta-owner`, pinned by the presigned URL's signature, see S3Store.presign_put).
Objects stored before owners were recorded have none (`owner` None). An upload may carry a precondition
(`expect`): ABSENT (no object may exist at the key) or the ETag of the object that must still be there, so an
upload URL cannot overwrite an object that appeared or changed after the URL was signed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import ipaddress
import os
import re
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote

import orjson

from services.core.blocking import Blocking
from services.core.config import Settings
from services.core.deps import Mode, Registry, answers, select_mode
from services.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)

MAX_KEY_BYTES = 1024
MAX_CONTENT_TYPE = 255
MAX_OWNER_BYTES = 200  # a sub: with key and content type, the JSON header stays under HEADER bytes
ABSENT = "*"  # an upload precondition: no object may exist at the key (S3's If-None-Match: *)
OWNER_HEADER = "x-amz-meta-owner"
CHUNK = 256 * 1024
HEADER = 4096  # embedded object header: key (<= 1024 bytes, JSON-escaped at most twice) fits with room
DEFAULT_CONTENT_TYPE = "application/octet-stream"
REMEDIATION = "set MINIO_ENDPOINT, MINIO_ACCESS_KEY and MINIO_SECRET_KEY to an S3 server that answers"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # embedded: sha256 hex of the bytes; live: the S3 ETag
    content_type: str
    last_modified: datetime
    owner: str | None = None  # the sub that signed the upload; None: not recorded (stored before owners were)
    detailed: bool = True  # False: from an S3 listing, which carries neither content type nor owner


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ObjectPage:
    objects: list[ObjectInfo]
    next_page_token: str  # "" on the last page


def check_bucket(name: str) -> str:
    """An S3-valid bucket name: 3-63 chars of a-z 0-9 . -, starting and ending with a letter or digit, no
    "..", ".-" or "-.", not an IP address."""
    bad = any(part in name for part in ("..", ".-", "-.")) or name.startswith("xn--")
    if bad or not _BUCKET.fullmatch(name):
        raise InvalidArgument(
            f"invalid bucket name {name[:70]!r}: 3-63 lowercase letters, digits, hyphens and dots, "
            "starting and ending with a letter or digit",
            field="bucket",
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    raise InvalidArgument(f"invalid bucket name {name!r}: looks like an IP address", field="bucket")


def check_key(key: str) -> str:
    """A key that cannot escape its bucket: relative, no '.'/'..'/empty segments, no NUL, control characters
    or backslashes, at most 1024 UTF-8 bytes."""
    problem = ""
    if not key:
        problem = "is empty"
    elif len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        problem = f"is longer than {MAX_KEY_BYTES} bytes"
    elif _CONTROL.search(key) or "\\" in key:
        problem = "contains NUL, control characters or backslashes"
    elif key.startswith("/"):
        problem = "is an absolute path"
    elif any(part in ("", ".", "..") for part in key.split("/")[:-1]) or key.split("/")[-1] in (".", ".."):
        problem = "contains '.', '..' or empty path segments"
    if problem:
        raise InvalidArgument(f"object key {key[:80]!r} {problem}", field="key")
    return key


def check_content_type(value: str) -> str:
    if len(value) > MAX_CONTENT_TYPE or _CONTROL.search(value):
        raise InvalidArgument("invalid content type", field="content_type")
    return value


def check_owner(owner: str) -> str:
    """A sub that can be kept as an object's owner: 1-200 UTF-8 bytes, no control characters."""
    if not owner or len(owner.encode("utf-8", "surrogatepass")) > MAX_OWNER_BYTES or _CONTROL.search(owner):
        raise FailedPrecondition(
            f"your user id cannot be recorded as an object's owner: it must be 1-{MAX_OWNER_BYTES} bytes "
            "without control characters; ask an admin to upload for you"
        )
    return owner


def precondition_failed(bucket: str, key: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"object {bucket}/{key} was created or changed after this upload URL was signed: "
        "ask for a new upload URL",
        path=f"{bucket}/{key}",
    )


class ObjectStore(Protocol):
    mode: Mode

    async def ensure_bucket(self, name: str) -> BucketInfo: ...
    async def create_bucket(self, name: str) -> BucketInfo: ...
    async def bucket_exists(self, name: str) -> bool: ...
    async def list_buckets(self) -> list[BucketInfo]: ...
    async def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo: ...
    async def get(self, bucket: str, key: str) -> bytes: ...
    async def stat(self, bucket: str, key: str) -> ObjectInfo: ...
    async def delete(self, bucket: str, key: str) -> bool: ...
    async def delete_prefix(self, bucket: str, prefix: str) -> int: ...
    async def list(
        self, bucket: str, prefix: str = "", page_size: int = 100, page_token: str = ""
    ) -> ObjectPage: ...
    async def details(self, bucket: str, infos: list[ObjectInfo]) -> list[ObjectInfo]: ...
    async def delete_keys(self, bucket: str, keys: list[str]) -> int: ...
    async def presign(
        self, bucket: str, key: str, method: str, expires_s: int, content_type: str = ""
    ) -> str: ...
    async def presign_put(self, bucket: str, key: str, expires_s: int, headers: Mapping[str, str]) -> str: ...
    async def write_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        max_bytes: int,
        owner: str | None = None,
        expect: str | None = None,
    ) -> ObjectInfo: ...
    async def read_stream(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]: ...
    async def close(self) -> None: ...


def _token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def page_token_after(key: str) -> str:
    """The page token that continues a listing with the first key after `key` (as list() makes them)."""
    return _token(key)


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        raise InvalidArgument("invalid page_token", field="page_token") from None


def page_size_of(size: int) -> int:
    """A listing's page size: 100 when unset, at most 1000."""
    return 100 if size <= 0 else min(size, 1000)


class TooLarge(InvalidArgument):
    """An upload crossed the configured limit; nothing was stored."""


# --------------------------------------------------------------------------------------------- embedded


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
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        max_bytes: int,
        owner: str | None = None,
        expect: str | None = None,
    ) -> ObjectInfo:
        """Streams chunks to a temporary file, refusing (and deleting it) once more than max_bytes arrived;
        with `expect`, commits only if the object at the key is still as expected (see _holds)."""
        check_content_type(content_type)
        if owner is not None:
            check_owner(owner)
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
                if size > max_bytes:
                    raise TooLarge(f"upload larger than {max_bytes} bytes", limit=max_bytes)
                digest.update(chunk)
                await _settled(self._pool.run(out.write, chunk))
            info = ObjectInfo(
                key,
                size,
                digest.hexdigest(),
                content_type or DEFAULT_CONTENT_TYPE,
                datetime.now(UTC),
                owner,
            )
            await self._pool.run(self._commit, final, temp, out, info, expect)
            return info
        except BaseException:
            # Right here, not in the pool: a cancelled upload (client gone) must not leave its temp file.
            self._abort(temp, out)
            raise

    async def put(self, bucket: str, key: str, data: bytes, content_type: str = "") -> ObjectInfo:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write_stream(bucket, key, one(), content_type, len(data))

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
        after = _untoken(page_token) if page_token else ""
        infos = sorted((i for i in self._infos(bucket, prefix) if i.key > after), key=lambda i: i.key)
        size = page_size_of(page_size)
        page = infos[:size]
        return ObjectPage(page, _token(page[-1].key) if len(infos) > size else "")

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


# ------------------------------------------------------------------------------------------------- live


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


_PLAIN_HEADER = re.compile(r"^[!-~](?:[ -~]*[!-~])?$")
_ENCODED_WORD = re.compile(r"^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$")


def encode_metadata(value: str) -> str:
    """A metadata value as an HTTP header carries it unchanged: printable ASCII as is, anything else (and
    anything that looks encoded) as an RFC 2047 encoded word, the way S3 itself returns non-ASCII metadata."""
    if _PLAIN_HEADER.fullmatch(value) and "  " not in value and not value.startswith("=?"):
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8", "surrogatepass")).decode() + "?="


def decode_metadata(value: str) -> str:
    match = _ENCODED_WORD.fullmatch(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8", "surrogatepass")
    except ValueError:
        return value


def _metadata(headers: Mapping[str, str], name: str) -> str | None:
    for header, value in headers.items():
        if header.lower() == name:
            return decode_metadata(value)
    return None


def _sigv4_quote(value: str, safe: str = "") -> str:
    # RFC 3986 unreserved characters stay; everything else is %XX (UTF-8), as SigV4's canonical form wants.
    return quote(value, safe="-_.~" + safe)


def presign_v4(
    *,
    method: str,
    endpoint: str,
    secure: bool,
    bucket: str,
    key: str,
    expires_s: int,
    headers: Mapping[str, str],
    access_key: str,
    secret_key: str,
    region: str,
    now: datetime | None = None,
) -> str:
    """A SigV4 query-string presigned URL that also signs `headers` (the minio SDK signs only Host): the
    request must then carry each of them with exactly the signed value, or S3 refuses its signature."""
    now = now or datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{region}/s3/aws4_request"
    host = endpoint.removesuffix(":443" if secure else ":80")
    signed = {"host": host, **{name.lower(): " ".join(value.split()) for name, value in headers.items()}}
    names = sorted(signed)
    params = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date,
        "X-Amz-Expires": str(expires_s),
        "X-Amz-SignedHeaders": ";".join(names),
    }
    query = "&".join(f"{_sigv4_quote(k)}={_sigv4_quote(v)}" for k, v in sorted(params.items()))
    path = f"/{bucket}/{_sigv4_quote(key, safe='/')}"
    canonical = "\n".join(
        (
            method,
            path,
            query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            "UNSIGNED-PAYLOAD",
        )
    )
    to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    signing_key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    scheme = "https" if secure else "http"
    return f"{scheme}://{host}{path}?{query}&X-Amz-Signature={signature}"


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
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            secure=settings.minio_secure,
            region="us-east-1",
            http_client=http,
        )
        self.endpoint = settings.minio_endpoint
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
                return ObjectPage(infos, _token(infos[-1].key))
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
        after = _untoken(page_token) if page_token else ""
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
            secure=self._settings.minio_secure,
            bucket=bucket,
            key=key,
            expires_s=expires_s,
            headers=headers,
            access_key=self._settings.minio_access_key,
            secret_key=self._settings.minio_secret_key,
            region="us-east-1",
        )

    async def write_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterator[bytes],
        content_type: str,
        max_bytes: int,
        owner: str | None = None,
        expect: str | None = None,
    ) -> ObjectInfo:
        raise FailedPrecondition("live storage: upload with the presigned S3 URL, not through the edge")

    async def read_stream(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]:
        raise FailedPrecondition("live storage: download with the presigned S3 URL, not through the edge")

    async def close(self) -> None:
        self._pool.shutdown()
        self.client._http.clear()


# ----------------------------------------------------------------------------------------------- choice


async def open_object_store(settings: Settings, deps: Registry) -> ObjectStore:
    """Live S3 when configured and answering; SIMULATION_MODE=false keeps a silent S3 (unhealthy, calls
    UNAVAILABLE) rather than writing objects to the data dir; auto mode falls back and says so."""
    configured = bool(settings.minio_endpoint and settings.minio_access_key and settings.minio_secret_key)
    live = S3Store(settings) if configured and settings.simulation_mode is not True else None
    reachable = live is not None and (await answers(live.ping, timeout_s=10))[0]
    mode = select_mode(settings.simulation_mode, configured, reachable)
    if mode is Mode.LIVE and live is not None:
        deps.add("objects", Mode.LIVE, settings.minio_endpoint, detail="S3 (minio SDK)", check=live.ping)
        if not reachable:
            deps.mark("objects", False, "S3 not answering (SIMULATION_MODE=false: no fallback)")
        return live
    if live is not None:
        await live.close()
    store = FolderStore(settings.data_dir / "buckets", mode)
    await store._pool.run(store.sweep)
    detail = "S3 not answering at start-up" if mode is Mode.FALLBACK else "folder of buckets in the data dir"
    deps.add("objects", mode, str(store.root), detail=detail, remediation=REMEDIATION, check=store.ping)
    return store
