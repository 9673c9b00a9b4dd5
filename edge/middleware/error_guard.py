"""Last resort: an exception no layer mapped becomes a JSON 500 with the request id, never a trace."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from edge.errors import ResponseTracker, api_error, request_id_of, send_api_error, was_answered

log = logging.getLogger("launchpad.edge")


class ErrorGuard:
    """Outermost: answers 500 for an escaped exception when no response has started yet.

    Once a response started it can only be cut short (the server closes the connection, the client sees a
    short body), so the failure is logged with its traceback, and nothing else: whoever raised it described it
    (BackendCallFailed is counted where it was made). An exception FastAPI's handler already answered and
    logged, which Starlette raises again, is not logged twice.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracking_send = ResponseTracker(send)
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = request_id_of(scope)
            if not tracking_send.started:
                await send_api_error(
                    send, api_error(exc, request_id, where="the edge's middleware"), request_id
                )
            elif not was_answered(scope, exc):
                log.error(
                    "edge: request %s failed after its response started",
                    request_id,
                    exc_info=exc,
                    extra={"request_id": request_id},
                )
