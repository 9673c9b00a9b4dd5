"""The embedded object store's signed URLs: GET and PUT /storage/v1/object/{bucket}/{key}.

The storage service signs these URLs (CreateSignedUrl) and verifies them (ReadObject/WriteObject); the edge
only streams: request body chunks into WriteObject, ReadObject's chunks into the response, never the whole
object in memory. The bytes are opaque data authorized by the URL's HMAC, so the WAF does not inspect these
routes, and their body limit is the upload limit (LAUNCHPAD_MAX_UPLOAD_BYTES) instead of the 2 MB API limit.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge import codec
from edge.clients import BackendCallFailed, call_metadata, client_ip
from edge.errors import ResponseTracker, request_id_of, send_error
from edge.middleware import BodyLimitMiddleware, header
from edge.routes import EdgeContext, _query_params
from launchpad.storage.v1 import storage_pb2
from services.core.errors import Code

log = logging.getLogger("launchpad.edge")

PREFIX = "/storage/v1/object/"
_METHODS = storage_pb2.DESCRIPTOR.services_by_name["StorageService"].methods_by_name
_encode_write = codec.encoder(storage_pb2.WriteObjectResponse.DESCRIPTOR)


class ClientGone(Exception):
    """The client disconnected mid-upload: the WriteObject call is cancelled and nothing is stored."""


def _signature(scope: Scope) -> storage_pb2.UrlSignature:
    query = {name: values[-1] for name, values in _query_params(scope.get("query_string", b"")).items()}
    expires = query.get("expires", "0")
    return storage_pb2.UrlSignature(
        tenant=query.get("tenant", ""),
        bucket=scope["path_params"]["bucket"],
        key=scope["path_params"]["key"],
        method=query.get("method", ""),
        expires=int(expires) if expires.isdigit() and len(expires) < 19 else 0,
        content_type=query.get("ct", ""),
        signature=query.get("sig", ""),
    )


class ObjectEndpoint:
    """ASGI endpoint for both methods; backend and signature errors answer in the edge's JSON error shape."""

    metrics_label = "/storage/v1/object/{bucket}/{key}"

    def __init__(self, ctx: EdgeContext) -> None:
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope) or uuid.uuid4().hex
        metadata = call_metadata(request_id, None, None, client_ip(scope))
        tracking_send = ResponseTracker(send)
        try:
            if scope["method"] == "PUT":
                await self._put(scope, receive, tracking_send, metadata)
            else:
                await self._get(scope, tracking_send, metadata)
        except ClientGone:
            return
        except grpc.aio.AioRpcError as exc:
            if tracking_send.started:
                raise  # headers are out: the server aborts the connection, the client sees a short body
            failure = BackendCallFailed(exc, "storage")
            await send_error(send, failure.code, failure.message, request_id, details=failure.detail_list)

    async def _get(self, scope: Scope, send: Send, metadata: Any) -> None:
        read = self.ctx.multicallable("storage", _METHODS["ReadObject"])
        call = read(storage_pb2.ReadObjectRequest(signature=_signature(scope)), metadata=metadata)
        stream = aiter(call)
        first = await anext(stream)  # errors (403, 404) arrive here, before any header is sent
        info = first.info
        headers = [
            (b"content-type", (info.content_type or "application/octet-stream").encode("latin-1")),
            (b"content-length", str(info.size).encode()),
            (b"etag", f'"{info.etag}"'.encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first.data, "more_body": True})
        async for message in stream:
            await send({"type": "http.response.body", "body": message.data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _put(self, scope: Scope, receive: Receive, send: Send, metadata: Any) -> None:
        signature = _signature(scope)
        sent = (header(scope, b"content-type") or b"").decode("latin-1").strip()
        if signature.content_type and sent != signature.content_type:
            await send_error(
                send,
                Code.PERMISSION_DENIED,
                f"Content-Type must be {signature.content_type!r}, as signed",
                request_id_of(scope),
            )
            return

        failure: list[BaseException] = []
        calls: list[Any] = []

        async def requests() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
            yield storage_pb2.WriteObjectRequest(signature=signature)
            try:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        raise ClientGone
                    if body := message.get("body", b""):
                        yield storage_pb2.WriteObjectRequest(data=body)
                    if not message.get("more_body", False):
                        return
            except Exception as exc:  # body over the limit, client gone: cancel, never commit a short object
                failure.append(exc)
                calls[0].cancel()

        write = self.ctx.multicallable("storage", _METHODS["WriteObject"])
        calls.append(write(requests(), metadata=metadata))
        try:
            response = await calls[0]
        except asyncio.CancelledError:
            if failure:
                raise failure[0] from None  # BodyLimitMiddleware answers 413 for its own exception
            raise
        data = orjson.dumps(_encode_write(response))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})


def object_routes(ctx: EdgeContext) -> list[Route]:
    endpoint = ObjectEndpoint(ctx)
    return [Route(PREFIX + "{bucket}/{key:path}", endpoint, methods=["GET", "PUT"])]


class BodyLimits:
    """BodyLimitMiddleware with the upload limit on the object routes and the API limit everywhere else."""

    def __init__(self, app: ASGIApp, max_bytes: int, upload_bytes: int) -> None:
        self.api = BodyLimitMiddleware(app, max_bytes)
        self.uploads = BodyLimitMiddleware(app, upload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            await self.uploads(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def outside_uploads(cls: Any) -> Any:
    """Wraps a middleware class so that the object routes bypass it (the WAF: their bodies are opaque data)."""

    class Wrapped:
        def __init__(self, app: ASGIApp, **options: Any) -> None:
            self.app = app
            self.inner = cls(app, **options)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["path"].startswith(PREFIX):
                await self.app(scope, receive, send)
            else:
                await self.inner(scope, receive, send)

    Wrapped.__name__ = f"{cls.__name__}OutsideUploads"
    return Wrapped
