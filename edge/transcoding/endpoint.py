"""The transcoding endpoint behind every contract route: JSON request -> proto -> backend call -> JSON.

An RpcEndpoint holds everything a request needs precomputed -- decoders, the encoder, the stub callable -- so
serving a request does no descriptor lookups. Every failure is answered through edge.errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge import codec
from edge.clients import call_metadata, client_ip, deadline
from edge.errors import api_error, http_parts, request_id_of
from edge.transcoding.context import EdgeContext
from edge.transcoding.request import ClientGone, query_params, read_body
from edge.transcoding.rules import RouteRule
from edge.transcoding.specs import RouteSpec

_JSON_HEADERS = [(b"content-type", b"application/json")]


class RpcEndpoint:
    """The ASGI app behind one route: JSON request -> proto -> backend call -> proto -> JSON."""

    def __init__(self, spec: RouteSpec, ctx: EdgeContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.metrics_label = spec.template
        method = spec.method
        self.request_cls = codec.message_class(method.input_type)
        self.public = spec.policy.public
        self.timeout_s = spec.timeout_s
        self.service = spec.service
        self.call: Callable[..., Any] | None = None
        self.decode_body = self._body_decoder(spec)
        self.path_setters = [(v.param, codec.text_setter(v.fields)) for v in spec.variables]
        queries = spec.query_fields()
        self.query_setters = {name: codec.text_setter(path) for name, path in queries.items()}
        self.encode = (
            codec.field_encoder(method.output_type.fields_by_name[spec.response_body])
            if spec.response_body
            else codec.encoder(method.output_type)
        )

    def rule_for(self, http_method: str) -> RouteRule:
        return self.spec.rule  # the route answers in full only for its binding's verb

    @staticmethod
    def _body_decoder(spec: RouteSpec) -> Callable[[Any, Any], None] | None:
        if spec.body == "*":
            whole = codec.decoder(spec.method.input_type)
            return lambda message, value: whole(message, value, "")
        if spec.body:
            one = codec.field_setter(spec.method.input_type.fields_by_name[spec.body])
            return lambda message, value: one(message, value, spec.body)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope) or uuid.uuid4().hex
        try:
            body, status, headers = await self._handle(scope, receive, request_id)
        except ClientGone:
            return
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Scope, receive: Receive, request_id: str) -> tuple[bytes, int, list]:
        try:
            return await self._transcode(scope, receive, request_id), 200, _JSON_HEADERS
        except ClientGone:
            raise
        except Exception as exc:
            error = api_error(exc, request_id, self.service, self.spec.method.full_name)
            return http_parts(error, request_id)

    async def _transcode(self, scope: Scope, receive: Receive, request_id: str) -> bytes:
        authorization = timeout_header = None
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"grpc-timeout":
                timeout_header = value.decode("latin-1")
        principal = token = None
        if not self.public:
            principal, token = await self.ctx.authenticate(authorization)
        timeout = deadline(self.timeout_s, timeout_header)
        request = await self._request(scope, receive)
        call = self.call or self._make_call()
        metadata = call_metadata(request_id, principal, token, client_ip(scope))
        response = await call(request, metadata=metadata, timeout=timeout)
        return orjson.dumps(self.encode(response))

    def _make_call(self) -> Callable[..., Any]:
        self.call = self.ctx.multicallable(self.service, self.spec.method)
        return self.call

    async def _request(self, scope: Scope, receive: Receive) -> Any:
        request = self.request_cls()
        if self.decode_body is not None:
            body = await read_body(receive)
            self.decode_body(request, codec.parse_json(body) if body.strip() else {})
        if self.query_setters and scope["query_string"]:
            for name, values in query_params(scope["query_string"]).items():
                setter = self.query_setters.get(name)
                if setter is not None:  # unknown parameters are ignored, as grpc-gateway does
                    setter(request, values)
        if self.path_setters:
            params = scope["path_params"]
            for param, setter in self.path_setters:
                setter(request, [params[param]])
        return request


def rpc_routes(specs: list[RouteSpec], ctx: EdgeContext) -> list[Route]:
    return [Route(spec.path, RpcEndpoint(spec, ctx), methods=[spec.http_method]) for spec in specs]
