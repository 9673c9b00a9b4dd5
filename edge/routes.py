"""HttpRule -> route table, and the transcoding endpoint behind every route.

At start-up every `launchpad.<svc>.v1` contract in generated/ is imported and each method's google.api.http
option (with its additional_bindings) becomes a RouteSpec: the Starlette path, which URL variables and query
parameters fill which request fields, the body mapping, the deadline and the access policy. An RpcEndpoint
holds everything a request needs precomputed -- decoders, the encoder, the stub callable -- so serving a
request does no descriptor lookups. Adding an RPC with an http option needs no edge code.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import grpc
import orjson
from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from edge import codec
from edge.clients import (
    BackendCallFailed,
    Backends,
    JwksSource,
    authenticate,
    call_metadata,
    client_ip,
    deadline,
    service_name,
)
from edge.errors import error_body, request_id_of, status_for
from services.core.contracts import MethodPolicy, method_policy
from services.core.errors import Code, ServiceError
from services.core.tokens import TokenVerifier

log = logging.getLogger("launchpad.edge")

_HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(
    r"\{(?P<field>[A-Za-z_][\w.]*)(?:=(?P<pattern>[^}]+))?\}|(?P<wild>\*\*|\*)|(?P<lit>[^{}*]+)"
)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_UNAUTHENTICATED_HEADERS = [*_JSON_HEADERS, (b"www-authenticate", b'Bearer realm="launchpad"')]


# ------------------------------------------------------------------------------------------ contracts


def contract_modules() -> list[ModuleType]:
    """Imports every generated launchpad/<svc>/v1/*_pb2 module (registering its descriptors)."""
    import launchpad

    names = {  # a set: the same folder may be on sys.path twice (relative and absolute)
        ".".join(("launchpad", path.parent.parent.name, "v1", path.stem))
        for root in launchpad.__path__
        for path in Path(root).glob("*/v1/*_pb2.py")
    }
    return [importlib.import_module(name) for name in sorted(names)]


def contract_services() -> list[ServiceDescriptor]:
    return [svc for module in contract_modules() for svc in module.DESCRIPTOR.services_by_name.values()]


# ----------------------------------------------------------------------------------------- templates


class _PatternConvertor(Convertor[str]):
    """A path variable with a pattern such as {name=shelves/*/books/*}: several segments, one value."""

    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _segments_regex(pattern: str) -> str:
    parts = {"*": "[^/]+", "**": ".+"}
    return "/".join(parts.get(seg, re.escape(seg)) for seg in pattern.split("/"))


def _convertor_for(pattern: str) -> str:
    """The Starlette convertor name for a variable's pattern ("" for one segment, "path" for **)."""
    if pattern == "*":
        return ""
    if pattern == "**":
        return ":path"
    regex = _segments_regex(pattern)
    name = "lp" + hashlib.sha256(regex.encode()).hexdigest()[:12]
    register_url_convertor(name, _PatternConvertor(regex))
    return f":{name}"


@dataclass(frozen=True, slots=True)
class PathVar:
    param: str  # the Starlette parameter name (p0, p1, ...): field paths contain dots
    field: str  # dotted request field, as written in the template
    fields: tuple[FieldDescriptor, ...]


def field_path(desc: Descriptor, dotted: str) -> tuple[FieldDescriptor, ...]:
    """ "a.b" -> the fields along it; ValueError naming the contract's mistake otherwise."""
    fields, current = [], desc
    for name in dotted.split("."):
        found = current.fields_by_name.get(name) if current is not None else None
        if found is None:
            raise ValueError(f"{desc.full_name} has no field {dotted!r}")
        fields.append(found)
        current = found.message_type
    leaf = fields[-1]
    if leaf.is_repeated or (
        leaf.message_type is not None and leaf.message_type.full_name not in codec.WRAPPERS
    ):
        raise ValueError(f"{desc.full_name}.{dotted} cannot be a path variable: it must be a singular scalar")
    return tuple(fields)


def compile_template(template: str, request: Descriptor) -> tuple[str, str, tuple[PathVar, ...]]:
    """google.api.http path template -> (Starlette path, OpenAPI path, variables)."""
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    path, openapi, variables = "", "", []
    for n, match in enumerate(_VARIABLE.finditer(template)):
        if match.group("lit") is not None:
            path += match.group("lit")
            openapi += match.group("lit")
        elif match.group("wild") is not None:  # an anonymous wildcard segment, matched but not bound
            path += f"{{w{n}{_convertor_for(match.group('wild'))}}}"
            openapi += f"{{w{n}}}"
        else:
            name, param = match.group("field"), f"p{len(variables)}"
            path += f"{{{param}{_convertor_for(match.group('pattern') or '*')}}}"
            openapi += f"{{{name}}}"
            variables.append(PathVar(param, name, field_path(request, name)))
    if "".join(m.group(0) for m in _VARIABLE.finditer(template)) != template:
        raise ValueError(f"cannot parse path template {template!r}")
    return path, openapi, tuple(variables)


# -------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One HTTP binding of one RPC, as the contract declares it."""

    service: str  # backend name, "data"
    method: MethodDescriptor
    policy: MethodPolicy
    http_method: str  # "GET", "POST", ...
    template: str  # as in the contract: "/api/auth/users/{username}"
    path: str  # Starlette path
    openapi_path: str
    variables: tuple[PathVar, ...]
    body: str  # "", "*" or a field name
    response_body: str
    binding_index: int  # 0 for the main binding, 1.. for additional_bindings
    timeout_s: float

    @property
    def operation_id(self) -> str:
        base = f"{self.method.containing_service.name}_{self.method.name}"
        return base if self.binding_index == 0 else f"{base}_{self.binding_index + 1}"

    def query_fields(self) -> dict[str, tuple[FieldDescriptor, ...]]:
        """URL query parameters this binding accepts: request fields bound by neither path nor body."""
        if self.body == "*":
            return {}
        bound = {v.field for v in self.variables} | ({self.body} if self.body else set())
        leaves = codec.text_leaves(self.method.input_type)
        return {
            name: path
            for name, path in leaves.items()
            if not any(".".join(f.name for f in path[: i + 1]) in bound for i in range(len(path)))
        }


@dataclass(frozen=True, slots=True)
class WebSocketSpec:
    service: str
    method: MethodDescriptor
    policy: MethodPolicy
    path: str
    timeout_s: float | None  # only when the contract sets one: streams are long-lived


def _rules(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    yield from rule.additional_bindings


def _verb_and_template(rule: http_pb2.HttpRule) -> tuple[str, str]:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    if pattern not in _HTTP_METHODS:
        raise ValueError(f"HttpRule without a path pattern: {rule}")
    return pattern.upper(), getattr(rule, pattern)


def _check_body(method: MethodDescriptor, body: str, response_body: str) -> None:
    if body not in ("", "*") and body not in method.input_type.fields_by_name:
        raise ValueError(f"{method.full_name}: body {body!r} is not a field of the request")
    if response_body and response_body not in method.output_type.fields_by_name:
        raise ValueError(
            f"{method.full_name}: response_body {response_body!r} is not a field of the response"
        )


def method_routes(method: MethodDescriptor) -> list[RouteSpec]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    if method.client_streaming or method.server_streaming:
        raise ValueError(
            f"{method.full_name}: streaming RPCs are exposed with the websocket option, not http"
        )
    policy = method_policy(method)
    specs = []
    for index, rule in enumerate(_rules(options.Extensions[annotations_pb2.http])):
        verb, template = _verb_and_template(rule)
        _check_body(method, rule.body, rule.response_body)
        path, openapi_path, variables = compile_template(template, method.input_type)
        specs.append(
            RouteSpec(
                service=service_name(method.containing_service),
                method=method,
                policy=policy,
                http_method=verb,
                template=template,
                path=path,
                openapi_path=openapi_path,
                variables=variables,
                body=rule.body,
                response_body=rule.response_body,
                binding_index=index,
                timeout_s=policy.timeout_ms / 1000,
            )
        )
    return specs


def websocket_spec(method: MethodDescriptor) -> WebSocketSpec | None:
    policy = method_policy(method)
    if not policy.websocket_path:
        return None
    if not method.server_streaming:
        raise ValueError(f"{method.full_name}: the websocket option needs a server- or bidi-streaming RPC")
    from launchpad.api.v1 import options_pb2

    explicit_ms = method.GetOptions().Extensions[options_pb2.timeout_ms]
    return WebSocketSpec(
        service=service_name(method.containing_service),
        method=method,
        policy=policy,
        path=policy.websocket_path,
        timeout_s=explicit_ms / 1000 if explicit_ms else None,
    )


def _specificity(spec: RouteSpec) -> tuple[int, int]:
    """Literal paths first, then templates with more literal segments (grpc-gateway prefers literals)."""
    literal_segments = sum(1 for seg in spec.path.split("/") if seg and "{" not in seg)
    return (1 if spec.variables else 0, -literal_segments)


def build_specs(services: list[ServiceDescriptor]) -> tuple[list[RouteSpec], list[WebSocketSpec]]:
    routes, sockets = [], []
    for service in services:
        for method in service.methods:
            routes.extend(method_routes(method))
            ws = websocket_spec(method)
            if ws is not None:
                sockets.append(ws)
    seen: dict[tuple[str, str], str] = {}
    for spec in routes:
        key = (spec.http_method, spec.path)
        if key in seen:
            raise ValueError(
                f"{spec.http_method} {spec.template} is bound twice ({seen[key]}, {spec.method.full_name})"
            )
        seen[key] = spec.method.full_name
    return sorted(routes, key=_specificity), sockets


# ---------------------------------------------------------------------------------------- endpoint


@dataclass(slots=True)
class EdgeContext:
    """What every endpoint shares: channels and the token verifier."""

    backends: Backends
    verifier: TokenVerifier
    jwks: JwksSource | None = None  # when the keys come from the auth service
    stubs: dict[str, Any] = field(default_factory=dict)

    async def authenticate(self, authorization: str | None) -> tuple[Any, str]:
        return await authenticate(self.verifier, authorization, self.jwks)

    def multicallable(self, service: str, method: MethodDescriptor) -> Any:
        """The channel's callable for one RPC (unary or streaming), created once per method."""
        key = f"/{method.containing_service.full_name}/{method.name}"
        stub = self.stubs.get(key)
        if stub is None:
            channel = self.backends.channel(service)
            factory = {
                (False, False): channel.unary_unary,
                (False, True): channel.unary_stream,
                (True, False): channel.stream_unary,
                (True, True): channel.stream_stream,
            }[(method.client_streaming, method.server_streaming)]
            stub = self.stubs[key] = factory(
                key,
                request_serializer=codec.message_class(method.input_type).SerializeToString,
                response_deserializer=codec.message_class(method.output_type).FromString,
                _registered_method=True,
            )
        return stub


class ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


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


def _query_params(raw: bytes) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8"):
        params.setdefault(name, []).append(value)
    return params


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
        except codec.CodecError as exc:
            details = [{"field": exc.field, "description": exc.description}]
            return _error(Code.INVALID_ARGUMENT, str(exc), request_id, details)
        except grpc.aio.AioRpcError as exc:
            failure = BackendCallFailed(exc, self.service)
            return _error(failure.code, failure.message, request_id, failure.detail_list)
        except BackendCallFailed as exc:
            return _error(exc.code, exc.message, request_id, exc.detail_list)
        except ServiceError as exc:
            return _error(exc.code, exc.message, request_id, [exc.details] if exc.details else [])
        except ClientGone:
            raise
        except Exception:
            log.exception(
                "edge: unexpected error in %s", self.spec.method.full_name, extra={"request_id": request_id}
            )
            return _error(Code.INTERNAL, f"internal error (request id {request_id})", request_id, [])

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
            for name, values in _query_params(scope["query_string"]).items():
                setter = self.query_setters.get(name)
                if setter is not None:  # unknown parameters are ignored, as grpc-gateway does
                    setter(request, values)
        if self.path_setters:
            params = scope["path_params"]
            for param, setter in self.path_setters:
                setter(request, [params[param]])
        return request


def _error(code: Code, message: str, request_id: str, details: list[Any]) -> tuple[bytes, int, list]:
    headers = _UNAUTHENTICATED_HEADERS if code == Code.UNAUTHENTICATED else _JSON_HEADERS
    if code == Code.RESOURCE_EXHAUSTED:
        headers = [*headers, *_retry_after(details)]
    return error_body(code, message, request_id, details), status_for(code), headers


def _retry_after(details: list[Any]) -> list[tuple[bytes, bytes]]:
    """A backend's `retry_after_s` detail (e.g. failed-login limits) as the HTTP Retry-After header."""
    for detail in details:
        wait = detail.get("retry_after_s") if isinstance(detail, dict) else None
        if isinstance(wait, int | float):
            return [(b"retry-after", str(max(1, math.ceil(wait))).encode())]
    return []


def rpc_routes(specs: list[RouteSpec], ctx: EdgeContext) -> list[Route]:
    return [Route(spec.path, RpcEndpoint(spec, ctx), methods=[spec.http_method]) for spec in specs]


class RouteTable(BaseRoute):
    """Many routes as one router entry: literal paths found by a dict lookup, templates tried in order.

    Starlette's router tries every route's regex in turn; with ~60 contract routes that scan would cost more
    than the rest of the edge's routing. Method mismatches still answer 405 through the matched Route.
    """

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._literal: dict[str, list[Route]] = {}
        self._templated: list[Route] = []
        for route in routes:
            if route.param_convertors:
                self._templated.append(route)
            else:
                self._literal.setdefault(route.path, []).append(route)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        partial = None
        for candidates in (self._literal.get(_route_path(scope), ()), self._templated):
            for route in candidates:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    return match, {**child, _MATCHED: route}
                if match is Match.PARTIAL and partial is None:
                    partial = {**child, _MATCHED: route}
        return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope[_MATCHED].handle(scope, receive, send)


_MATCHED = "launchpad.route"


def _route_path(scope: Scope) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
