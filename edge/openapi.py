"""The OpenAPI 3.1 document of the edge, generated from the same RouteSpecs that build the routes.

Schemas mirror the JSON the codec writes: proto field names, 64-bit integers as numbers, enums as names,
Timestamp as date-time strings, json_unwrap messages as their bare values, unset messages as null.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from edge import codec
from edge.transcoding.specs import RouteSpec, WebSocketSpec

F = FieldDescriptor
_REF = "#/components/schemas/"
_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT64: {"type": "integer", "format": "int64"},
    F.TYPE_SINT64: {"type": "integer", "format": "int64"},
    F.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    F.TYPE_UINT64: {"type": "integer", "format": "uint64", "minimum": 0},
    F.TYPE_FIXED64: {"type": "integer", "format": "uint64", "minimum": 0},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    F.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$", "examples": ["1.5s"]},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated field paths"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "any JSON value"},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    "google.protobuf.Empty": {"type": "object"},
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "details", "request_id"],
    "properties": {
        "code": {
            "type": "integer",
            "description": "gRPC status code (3 INVALID_ARGUMENT, 16 UNAUTHENTICATED, ...)",
        },
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
        "request_id": {"type": "string", "description": "echoed in the x-request-id response header"},
    },
}
_DESCRIPTION = (
    "REST and WebSocket edge of the Launchpad gRPC services, generated from their .proto contracts "
    "(google.api.http options). Send `Authorization: Bearer <jwt>` (from POST /api/auth/login) except on "
    "public operations. Optional headers: `x-request-id` (echoed back), `grpc-timeout` (e.g. `500m`, `2S`; "
    "may only lower the operation's default deadline). Request bodies accept proto or lowerCamel field names; "
    "responses use proto names. Errors: `{code, message, details, request_id}` with the gRPC code."
)


class _Schemas:
    """Collects one component schema per message type reachable from the routes."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def message_ref(self, desc: Descriptor) -> dict[str, Any]:
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        if desc.full_name in codec.WRAPPERS:
            inner = self.field(desc.fields_by_name["value"])
            return {"anyOf": [inner, {"type": "null"}]}
        if desc.full_name not in self.components:
            self.components[desc.full_name] = {}  # reserve first: message types may refer to themselves
            self.components[desc.full_name] = self._message(desc)
        return {"$ref": _REF + desc.full_name}

    def _message(self, desc: Descriptor) -> dict[str, Any]:
        if codec.is_json_unwrap(desc):
            return self._unwrapped(desc)
        return {
            "type": "object",
            "title": desc.name,
            "properties": {field.name: self.field(field) for field in desc.fields},
        }

    def _unwrapped(self, desc: Descriptor) -> dict[str, Any]:
        if len(desc.fields) == 1:
            return {"title": desc.name, **self.field(desc.fields[0])}
        options = [self.value(field) for field in desc.fields]
        return {"title": desc.name, "description": "a bare JSON value", "anyOf": options}

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.value(sub.fields_by_name["value"])}
        if field.is_repeated:
            return {"type": "array", "items": self.value(field)}
        schema = self.value(field)
        if sub is not None and "$ref" in schema and not codec.is_json_unwrap(sub):
            return {"anyOf": [schema, {"type": "null"}]}  # an unset message is written as null
        return schema

    def value(self, field: FieldDescriptor) -> dict[str, Any]:
        """Schema of one value of the field (an item when repeated)."""
        if field.type == F.TYPE_MESSAGE:
            return self.message_ref(field.message_type)
        if field.type == F.TYPE_ENUM:
            if field.enum_type.full_name == "google.protobuf.NullValue":
                return {"type": "null"}
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _parameters(spec: RouteSpec, schemas: _Schemas) -> list[dict[str, Any]]:
    params = [
        {"name": var.field, "in": "path", "required": True, "schema": schemas.value(var.fields[-1])}
        for var in spec.variables
    ]
    for name, path in spec.query_fields().items():
        if name == ".".join(f.name for f in path):  # document proto names; lowerCamel is accepted too
            schema = schemas.field(path[-1]) if path[-1].is_repeated else schemas.value(path[-1])
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
    return params


def _request_body(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any] | None:
    if not spec.body:
        return None
    if spec.body == "*":
        schema = schemas.message_ref(spec.method.input_type)
    else:
        schema = schemas.field(spec.method.input_type.fields_by_name[spec.body])
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _response_schema(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any]:
    if spec.response_body:
        return schemas.field(spec.method.output_type.fields_by_name[spec.response_body])
    return schemas.message_ref(spec.method.output_type)


def _operation(spec: RouteSpec, schemas: _Schemas) -> dict[str, Any]:
    service = spec.method.containing_service
    operation: dict[str, Any] = {
        "operationId": spec.operation_id,
        "tags": [spec.service],
        "summary": f"{service.name}.{spec.method.name}",
        "description": f"gRPC `{service.full_name}/{spec.method.name}`; default deadline {spec.timeout_s:g} s.",
        "parameters": _parameters(spec, schemas),
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": _response_schema(spec, schemas)}},
            },
            "default": {"$ref": "#/components/responses/Error"},
        },
    }
    body = _request_body(spec, schemas)
    if body is not None:
        operation["requestBody"] = body
    if spec.policy.public:
        operation["security"] = []
    elif spec.policy.roles:
        operation["description"] += f" Roles: {', '.join(sorted(spec.policy.roles))}."
    return operation


def _websocket_operation(spec: WebSocketSpec, schemas: _Schemas) -> dict[str, Any]:
    method = spec.method
    kind = "bidirectional stream" if method.client_streaming else "server stream"
    operation: dict[str, Any] = {
        "operationId": f"{method.containing_service.name}_{method.name}_ws",
        "tags": [spec.service],
        "summary": f"WebSocket: {method.containing_service.name}.{method.name} ({kind})",
        "description": (
            "Upgrade to a WebSocket. Authenticate with the `token` query parameter or the Authorization header "
            "(close 1008 when missing or invalid). Client text frames are JSON requests "
            f"({method.input_type.full_name}); server frames are JSON responses ({method.output_type.full_name}) "
            'or {"type": "error", "error": {"code", "message"}}.'
        ),
        "parameters": [{"name": "token", "in": "query", "required": False, "schema": {"type": "string"}}],
        "responses": {"101": {"description": "Switching Protocols"}},
        "x-websocket": {
            "request": schemas.message_ref(method.input_type),
            "response": schemas.message_ref(method.output_type),
        },
    }
    if spec.policy.public:
        operation["security"] = []
    return operation


def _fixed_paths() -> dict[str, Any]:
    public: dict[str, Any] = {"security": [], "tags": ["edge"]}
    return {
        "/health": {
            "get": {
                **public,
                "operationId": "Edge_Health",
                "summary": "Health of the edge's backends and their dependency modes",
                "responses": {
                    "200": {"description": "every backend SERVING", "content": {"application/json": {}}},
                    "503": {"description": "degraded: at least one backend is not SERVING"},
                },
            }
        },
        "/metrics": {
            "get": {
                **public,
                "operationId": "Edge_Metrics",
                "summary": "Prometheus metrics of the edge",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
            }
        },
    }


def build_openapi(routes: list[RouteSpec], sockets: list[WebSocketSpec], version: str) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = _fixed_paths()
    for spec in sorted(routes, key=lambda s: (s.openapi_path, s.binding_index)):
        paths.setdefault(spec.openapi_path, {})[spec.http_method.lower()] = _operation(spec, schemas)
    for ws in sockets:
        paths.setdefault(ws.path, {})["get"] = _websocket_operation(ws, schemas)
    schemas.components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "Launchpad API", "version": version, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "responses": {
                "Error": {
                    "description": "An error (HTTP status from the gRPC code, grpc-gateway's table)",
                    "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                }
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
    }
