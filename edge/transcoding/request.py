"""Reading an HTTP request over raw ASGI: the whole body, the query string."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import Receive


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer (and nothing is stored)."""


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def query_params(raw: bytes) -> dict[str, list[str]]:
    """A raw query string -> name -> every value, in order (blank values kept)."""
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
        params.setdefault(name, []).append(value)
    return params
