"""CORS for browsers: Starlette's CORSMiddleware, only for requests that carry an Origin header."""

from __future__ import annotations

from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class BrowserCors:
    """Starlette's CORSMiddleware for requests that carry an Origin header (browsers); others skip it.

    CORS only concerns browsers, and they always send Origin on cross-origin requests; for the rest the
    middleware would only add `Vary: Origin` to responses that carry no caching headers anyway.
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(key == b"origin" for key, _ in scope["headers"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
