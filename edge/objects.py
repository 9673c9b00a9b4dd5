"""Byte-stream routes: the embedded object store's signed URLs, GET and PUT /storage/v1/object/{bucket}/{key}.

The routes come from the storage contract: ReadObject and WriteObject carry the (launchpad.api.v1.byte_stream)
option (the path template) and the (launchpad.api.v1.edge) rule: both are exempt from the WAF, and the upload
(PUT) also from the JSON content type, with the upload body limit. The storage service signs these URLs
(CreateSignedUrl) and verifies them (ReadObject/WriteObject); the edge only streams: request body chunks into
WriteObject, ReadObject's chunks into the response, never the whole object in memory. The messages are the
storage contract's (specs.byte_stream_spec refuses a byte_stream on any others). A failure after the headers
went out can only cut the body short: it is raised, described, for ErrorGuard to log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from itertools import groupby
from typing import Any

import grpc
import orjson
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge import codec
from edge.clients import call_metadata, client_ip
from edge.errors import BackendCallFailed, ResponseTracker, request_id_of, send_api_error, send_error
from edge.middleware.headers import header
from edge.transcoding.context import EdgeContext
from edge.transcoding.request import ClientGone, query_params
from edge.transcoding.rules import NO_RULE, RouteRule
from edge.transcoding.specs import ByteStreamSpec
from launchpad.storage.v1 import storage_pb2
from services.core.errors import Code

_encode_write = codec.encoder(storage_pb2.WriteObjectResponse.DESCRIPTOR)


class _Route:
    """One byte-stream spec, with the setters that fill the signature from its path variables."""

    def __init__(self, spec: ByteStreamSpec) -> None:
        self.spec = spec
        self.path_setters = [(v.param, codec.text_setter(v.fields)) for v in spec.variables]

    def signature(self, scope: Scope) -> storage_pb2.UrlSignature:
        query = {name: values[-1] for name, values in query_params(scope.get("query_string", b"")).items()}
        expires = query.get("expires", "0")
        signature = storage_pb2.UrlSignature(
            tenant=query.get("tenant", ""),
            method=query.get("method", ""),
            expires=int(expires) if expires.isdigit() and len(expires) < 19 else 0,
            content_type=query.get("ct", ""),
            signature=query.get("sig", ""),
        )
        for param, setter in self.path_setters:
            setter(signature, [scope["path_params"][param]])
        return signature


class ObjectEndpoint:
    """ASGI endpoint for both methods; backend and signature errors answer in the edge's JSON error shape."""

    def __init__(self, ctx: EdgeContext, specs: list[ByteStreamSpec]) -> None:
        self.ctx = ctx
        self.routes = {spec.http_method: _Route(spec) for spec in specs}
        self.metrics_label = specs[0].openapi_path

    def rule_for(self, http_method: str) -> RouteRule:
        route = self.routes.get(_verb(http_method))
        return route.spec.rule if route is not None else NO_RULE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope) or uuid.uuid4().hex
        metadata = call_metadata(request_id, None, None, client_ip(scope))
        tracking_send = ResponseTracker(send)
        route = self.routes[_verb(scope["method"])]
        try:
            if scope["method"] == "PUT":
                await self._put(route, scope, receive, tracking_send, metadata)
            else:
                await self._get(route, scope, tracking_send, metadata)
        except ClientGone:
            return
        except grpc.aio.AioRpcError as exc:
            failed = BackendCallFailed(exc, route.spec.service)
            if tracking_send.started:
                raise failed from exc  # headers are out: ErrorGuard logs it, the client sees a short body
            await send_api_error(send, failed.error, request_id)

    async def _get(self, route: _Route, scope: Scope, send: Send, metadata: Any) -> None:
        read = self.ctx.multicallable(route.spec.service, route.spec.method)
        call = read(storage_pb2.ReadObjectRequest(signature=route.signature(scope)), metadata=metadata)
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

    async def _put(self, route: _Route, scope: Scope, receive: Receive, send: Send, metadata: Any) -> None:
        signature = route.signature(scope)
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

        write = self.ctx.multicallable(route.spec.service, route.spec.method)
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


def _verb(http_method: str) -> str:
    return "PUT" if http_method == "PUT" else "GET"  # HEAD is answered as GET


def object_routes(ctx: EdgeContext, specs: list[ByteStreamSpec]) -> list[Route]:
    """One route per byte-stream path, answering each verb its contract declares (405 for the others)."""
    by_path = sorted(specs, key=lambda spec: spec.path)
    routes = []
    for path, group in groupby(by_path, key=lambda spec: spec.path):
        same_path = list(group)
        methods = [spec.http_method for spec in same_path]
        routes.append(Route(path, ObjectEndpoint(ctx, same_path), methods=methods))
    return routes
