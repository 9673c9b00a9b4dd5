"""Reading request headers from an ASGI scope without building a Request."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (`name` lower-case), None when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def media_type(value: bytes | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    if value is None:
        return ""
    return value.split(b";", 1)[0].strip().lower().decode("latin-1")


def has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    if header(scope, b"transfer-encoding") is not None:
        return True
    return length is not None and length.strip() not in (b"", b"0")
