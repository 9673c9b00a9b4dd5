"""What every object store speaks: object and bucket info, name checks, pages, the ObjectStore protocol.

Both stores (folderstore: embedded; s3store: live) take physical bucket names (S3 rules, checked here) and keys
checked by `check_key`; objectstore.open_object_store picks one.

Owners: an object's `owner` is the `sub` that signed its upload URL, kept with the object (embedded: in the
header; S3: user metadata `x-amz-meta-owner`, pinned by the presigned URL's signature, see S3Store.presign_put).
An object whose upload recorded no owner has `owner` None. An upload may carry a precondition
(`expect`): ABSENT (no object may exist at the key) or the ETag of the object that must still be there, so an
upload URL cannot overwrite an object that appeared or changed after the URL was signed.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.core.deps import Mode
from services.core.errors import FailedPrecondition, InvalidArgument

MAX_KEY_BYTES = 1024
MAX_CONTENT_TYPE = 255
MAX_OWNER_BYTES = 200  # a sub: with key and content type, the JSON header stays under HEADER bytes
ABSENT = "*"  # an upload precondition: no object may exist at the key (S3's If-None-Match: *)
OWNER_HEADER = "x-amz-meta-owner"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_HEADER = re.compile(r"^[!-~](?:[ -~]*[!-~])?$")
_ENCODED_WORD = re.compile(r"^=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # embedded: sha256 hex of the bytes; live: the S3 ETag
    content_type: str
    last_modified: datetime
    owner: str | None = None  # the sub that signed the upload; None: no owner recorded
    detailed: bool = True  # False: from an S3 listing, which carries neither content type nor owner


@dataclass(frozen=True, slots=True)
class BucketInfo:
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ObjectPage:
    objects: list[ObjectInfo]
    next_page_token: str  # "" on the last page


@dataclass(frozen=True, slots=True)
class Upload:
    """What an upload must respect besides its bytes: their content type and limit, the owner it records
    and its precondition (None: none; ABSENT; or the ETag of the object that must still be there)."""

    content_type: str
    max_bytes: int
    owner: str | None = None
    expect: str | None = None


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
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], upload: Upload
    ) -> ObjectInfo: ...
    async def read_stream(self, bucket: str, key: str) -> tuple[ObjectInfo, AsyncIterator[bytes]]: ...
    async def close(self) -> None: ...


def page_token_after(key: str) -> str:
    """The page token that continues a listing with the first key after `key` (as list() makes them)."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def page_token_key(token: str) -> str:
    """The key a page token continues after; InvalidArgument for a token no listing made."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        raise InvalidArgument("invalid page_token", field="page_token") from None


def page_size_of(size: int) -> int:
    """A listing's page size: 100 when unset, at most 1000."""
    return 100 if size <= 0 else min(size, 1000)


class TooLarge(InvalidArgument):
    """An upload crossed the configured limit; nothing was stored."""


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
