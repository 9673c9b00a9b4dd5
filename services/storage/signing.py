"""Storage's signed URLs and sealed page tokens.

Embedded signed URLs point at the edge and carry an HMAC-SHA256 over method, tenant, bucket, key, expiry and,
for uploads, content type, owner (the signer's sub) and precondition; ReadObject/WriteObject verify it. An
upload's owner and precondition travel inside the `sig` parameter (`<hmac>.<base64url JSON [owner, expect]>`):
the edge passes `sig` through untouched, so neither the edge nor the proto needs to know about them. Live signed URLs
are S3's own: downloads the SDK's, uploads ours with Content-Type and x-amz-meta-owner (and, on governed
storage, If-None-Match / If-Match) among the signed headers, which the uploader must send as given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from launchpad.storage.v1 import storage_pb2
from services.core.config import Settings
from services.core.errors import InvalidArgument, PermissionDenied
from services.core.files import create_once


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
    if settings.storage.url_secret:
        return settings.storage.url_secret.reveal().encode()
    return create_once(settings.process.data_dir / "storage" / "url-secret", lambda: secrets.token_bytes(32))
