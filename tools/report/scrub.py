"""Secrets out of the report: a scrubber over whole texts, and redaction of the answers it quotes."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|DSN|CREDENTIAL", re.IGNORECASE)
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")  # an unsigned one (empty third part) too
_URL_SIGNATURE_PARAMS = {"sig", "signature", "x-amz-signature", "x-amz-credential", "x-amz-security-token"}
# A signature parameter anywhere in a text: after ? or &, and after &amp; in an XML (S3) error body.
_SIGNED_PARAM = re.compile(
    r"((?<![\w-])(?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|token)=)"
    r"[^&\s\"'<>`\\]+",
    re.IGNORECASE,
)
# Values too plain to scrub everywhere: LAUNCHPAD_TOKEN_TTL_S=3600 must not erase every "3600" in the report.
_MIN_SECRET = 6
_COMMON_WORDS = frozenset({"enabled", "disabled", "default", "localhost", "postgres", "secret", "password"})


class Scrubber:
    """Removes secrets from text: every value of a secret-looking variable (KEY, SECRET, TOKEN, PASSWORD,
    DSN..., any case) and the password part of any URL or DSN in the environment, each as written,
    JSON-escaped and URL-quoted; the value of every URL signature parameter (sig=, X-Amz-Signature=,
    token=...); JWTs. Values shorter than 6 characters, numbers and common words stay (see _COMMON_WORDS)."""

    def __init__(self, env: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        values = set(extra)
        for name, value in env.items():
            if _SECRET_NAME.search(name) and not name.upper().endswith("_PATH"):
                values.add(value)
            values.update(_embedded_passwords(value))
        forms = {form for value in values if _worth_scrubbing(value) for form in _written_forms(value)}
        # Longest first, so a DSN goes whole before its password.
        self.values = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        text = _SIGNED_PARAM.sub(rf"\1{REDACTED}", text)
        return _JWT.sub("<redacted JWT>", text)


def _worth_scrubbing(value: str) -> bool:
    return (
        len(value) >= _MIN_SECRET
        and not re.fullmatch(r"[\d.]+", value)
        and value.lower() not in _COMMON_WORDS
    )


def _written_forms(value: str) -> set[str]:
    """The value as written, inside a JSON string (ASCII-escaped or not) and URL-quoted."""
    return {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value),
        quote(value, safe=""),
        quote_plus(value),
    }


def _embedded_passwords(value: str) -> set[str]:
    """user:password@ in a URL, password=... in a key=value DSN."""
    found = set(re.findall(r"(?i)\bpassword\s*=\s*'?([^\s']+)", value))
    if "://" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.add(password)
    return found


def redact_url(url: str) -> str:
    """A signed URL with its signature (and S3 credential) replaced; the rest stays readable."""
    parts = urlsplit(url)
    query = [
        (k, REDACTED if k.lower() in _URL_SIGNATURE_PARAMS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="<>/")))


def redact(value: Any) -> Any:
    """A response body with tokens and signed URLs redacted (the Scrubber still runs over the whole file)."""
    if isinstance(value, dict):
        return {k: REDACTED if k in ("token", "password") else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and value.startswith(("http://", "https://")) and "?" in value:
        return redact_url(value)
    return value
