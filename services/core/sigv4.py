"""SigV4 query-string presigning that also signs chosen headers (the minio SDK signs only Host)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote


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
