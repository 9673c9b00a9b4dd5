"""/openapi.json is generated from the contracts: every route, its parameters, bodies, schemas and security."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from edge.transcoding import discovery
from edge.transcoding import specs as route_specs
from tests.edge.test_edge_app import _static_verifier, edge_app


@pytest.fixture
async def client(settings_env: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = edge_app({}, verifier=_static_verifier())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        yield client


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_http_route_of_the_contracts_is_documented(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    specs, sockets = route_specs.build_specs(discovery.contract_services())
    for spec in specs:
        assert spec.http_method.lower() in document["paths"][spec.openapi_path], spec.template
    for socket in sockets:
        assert document["paths"][socket.path]["get"]["responses"]["101"]
    assert {"/health", "/metrics"} <= set(document["paths"])
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


def test_all_references_resolve(document: dict[str, Any]) -> None:
    refs = _refs(document)
    assert refs
    for ref in refs:
        assert _resolve(document, ref) is not None, ref


def test_security_is_bearer_except_public_rpcs(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert document["security"] == [{"bearerAuth": []}]
    paths = document["paths"]
    assert paths["/api/auth/login"]["post"]["security"] == []
    assert paths["/.well-known/jwks.json"]["get"]["security"] == []
    assert "security" not in paths["/api/data/query"]["post"]  # the global bearer requirement applies
    assert "admin" in paths["/api/auth/users"]["post"]["description"]


def test_bodies_parameters_and_responses(document: dict[str, Any]) -> None:
    query = document["paths"]["/api/data/query"]["post"]
    body = query["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/launchpad.data.v1.QueryRequest"}
    ok = query["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/launchpad.data.v1.QueryResponse"}
    assert query["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    policy = document["paths"]["/api/policies"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert {"$ref": "#/components/schemas/launchpad.auth.v1.Policy"} in policy["anyOf"]  # body: "policy"
    objects = document["paths"]["/api/storage/buckets/{bucket}/objects"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in objects} == {
        ("bucket", "path"),
        ("prefix", "query"),
        ("page_size", "query"),
        ("page_token", "query"),
    }
    assert next(p for p in objects if p["name"] == "page_size")["schema"]["type"] == "integer"


def test_schemas_describe_the_json_the_codec_writes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    response = schemas["launchpad.data.v1.QueryResponse"]["properties"]
    assert response["row_count"] == {"type": "integer", "format": "uint64", "minimum": 0}
    assert response["rows"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/launchpad.data.v1.Row"},
    }
    assert schemas["launchpad.data.v1.Row"]["type"] == "array"  # json_unwrap: a bare array of cells
    cell_types = {str(option.get("type")) for option in schemas["launchpad.data.v1.Cell"]["anyOf"]}
    assert {"null", "integer", "number", "string", "boolean"} <= cell_types
    user = schemas["launchpad.auth.v1.User"]["properties"]
    assert user["created_at"] == {"type": "string", "format": "date-time"}
    login = schemas["launchpad.auth.v1.LoginResponse"]["properties"]
    assert login["user"]["anyOf"][1] == {"type": "null"}  # unset messages are written as null
    assert schemas["launchpad.logs.v1.LogEntry"]["properties"]["labels"]["additionalProperties"] == {
        "type": "string"
    }
    assert schemas["Error"]["required"] == ["code", "message", "details", "request_id"]


async def test_swagger_ui_points_at_the_document(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger-ui" in response.text and "/openapi.json" in response.text
