"""HttpRule (and the edge's own method options) -> route specs: what each binding of each RPC is.

Every method's google.api.http option, with its additional_bindings, becomes one RouteSpec per binding: the
Starlette path, which URL variables and query parameters fill which request fields, the body mapping, the
deadline, the access policy and the method's (launchpad.api.v1.edge) rule, which every binding shares, so an
alias can never lose what its method declares. A byte_stream option makes a ByteStreamSpec instead (raw bytes
over plain HTTP, the embedded object store's signed URLs). Options that the edge would ignore, or that would
open a route too wide, stop it at start-up (check_options).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

from edge import codec
from edge.transcoding.discovery import service_name
from edge.transcoding.rules import NO_RULE, RouteRule, WafField
from edge.transcoding.templates import PathVar, compile_template
from launchpad.api.v1 import options_pb2
from launchpad.storage.v1 import storage_pb2
from services.core.contracts import MethodPolicy, method_policy

_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def route_rule(method: MethodDescriptor) -> RouteRule:
    option = method.GetOptions().Extensions[options_pb2.edge]
    fields = tuple(
        (f.field, WafField(only=frozenset(f.only), skip=frozenset(f.skip))) for f in option.waf_fields
    )
    for name, _ in fields:
        if name not in method.input_type.fields_by_name:
            raise ValueError(f"{method.full_name}: waf_fields names {name!r}, not a field of the request")
    return RouteRule(fields, option.waf_skip, option.raw_body, option.upload_body)


_BYTE_STREAM_ONLY = ("waf_skip", "raw_body", "upload_body")
_REQUEST_BODY = ("raw_body", "upload_body")


def check_options(method: MethodDescriptor) -> None:
    """Refuses, at start-up, method options the edge would ignore or that would open a route too wide; the
    message names the method and what to change."""
    options = method.GetOptions()
    http = options.HasExtension(annotations_pb2.http)
    byte_stream = options.HasExtension(options_pb2.byte_stream)
    websocket = options.HasExtension(options_pb2.websocket)
    access = options.Extensions[options_pb2.access]
    name = method.full_name
    if access.internal and (http or byte_stream or websocket):
        raise ValueError(
            f"{name}: an access.internal RPC is never routed to clients: drop its http, byte_stream and "
            "websocket options, or drop internal"
        )
    if byte_stream and not access.public:
        raise ValueError(
            f"{name}: a byte_stream route calls the RPC without a principal (the signed URL authorizes "
            "it): set access.public, or serve the RPC with http"
        )
    if not options.HasExtension(options_pb2.edge):
        return
    if not (http or byte_stream):
        raise ValueError(f"{name}: the edge option applies to http and byte_stream routes only: drop it")
    rule = options.Extensions[options_pb2.edge]
    exempt = [option for option in _BYTE_STREAM_ONLY if getattr(rule, option)]
    if exempt and not byte_stream:
        raise ValueError(
            f"{name}: {', '.join(exempt)} apply to byte_stream routes only (opaque data a signed URL "
            "authorizes): drop them, or serve the RPC with byte_stream"
        )
    body = [option for option in _REQUEST_BODY if getattr(rule, option)]
    if body and byte_stream and method.server_streaming:
        raise ValueError(
            f"{name}: {', '.join(body)} describe a request body and a byte_stream download (GET) has "
            "none: drop them"
        )


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
    rule: RouteRule = NO_RULE  # the same for every binding of the method

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


@dataclass(frozen=True, slots=True)
class ByteStreamSpec:
    """A streaming RPC served as raw bytes over plain HTTP; `variables` name fields of the signature."""

    service: str
    method: MethodDescriptor
    http_method: str  # "GET" for a server stream, "PUT" for a client stream
    template: str
    path: str
    openapi_path: str
    variables: tuple[PathVar, ...]
    rule: RouteRule


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
    edge_rule = route_rule(method)
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
                rule=edge_rule,
            )
        )
    return specs


def websocket_spec(method: MethodDescriptor) -> WebSocketSpec | None:
    policy = method_policy(method)
    if not policy.websocket_path:
        return None
    if not method.server_streaming:
        raise ValueError(f"{method.full_name}: the websocket option needs a server- or bidi-streaming RPC")
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


# What edge/objects.py builds and reads (signed-URL parameters in, object bytes and info out), by verb.
_BYTE_STREAM_MESSAGES = {
    "GET": (storage_pb2.ReadObjectRequest.DESCRIPTOR, storage_pb2.ReadObjectResponse.DESCRIPTOR),
    "PUT": (storage_pb2.WriteObjectRequest.DESCRIPTOR, storage_pb2.WriteObjectResponse.DESCRIPTOR),
}


def byte_stream_spec(method: MethodDescriptor) -> ByteStreamSpec | None:
    options = method.GetOptions()
    if not options.HasExtension(options_pb2.byte_stream):
        return None
    check_options(method)
    if method.client_streaming == method.server_streaming:
        raise ValueError(f"{method.full_name}: byte_stream needs a server- or a client-streaming RPC")
    http_method = "PUT" if method.client_streaming else "GET"
    request, response = _BYTE_STREAM_MESSAGES[http_method]
    if (method.input_type.full_name, method.output_type.full_name) != (request.full_name, response.full_name):
        raise ValueError(
            f"{method.full_name}: a byte_stream {http_method} must take {request.full_name} and return "
            f"{response.full_name} (the messages the edge's object routes speak)"
        )
    template = options.Extensions[options_pb2.byte_stream].path
    signature = request.fields_by_name["signature"].message_type
    path, openapi_path, variables = compile_template(template, signature)
    return ByteStreamSpec(
        service=service_name(method.containing_service),
        method=method,
        http_method=http_method,
        template=template,
        path=path,
        openapi_path=openapi_path,
        variables=variables,
        rule=route_rule(method),
    )


def byte_stream_specs(services: list[ServiceDescriptor]) -> list[ByteStreamSpec]:
    return [spec for s in services for m in s.methods if (spec := byte_stream_spec(m)) is not None]


def build_specs(services: list[ServiceDescriptor]) -> tuple[list[RouteSpec], list[WebSocketSpec]]:
    routes, sockets = [], []
    for service in services:
        for method in service.methods:
            check_options(method)
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
