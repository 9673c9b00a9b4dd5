"""HttpRule -> routes: templates, bindings, query/path/body mapping, and "a new RPC needs no edge code".

Most mappings are exercised through a contract defined here at run time (launchpad.echotest.v1, never served
in production): an echo service whose RPCs return the request the edge built, served by a real grpc.aio server.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from edge.app import create_app
from edge.middleware.rate_limit import MemoryRateLimiter
from edge.transcoding import discovery, templates
from edge.transcoding import specs as route_specs
from launchpad.api.v1 import options_pb2
from services.core.config import load_settings
from services.core.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, TEST_KEYS, make_token

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "launchpad.echotest.v1"


def _field(name: str, number: int, kind: int, *, type_name: str = "", repeated: bool = False) -> F:
    field = F(name=name, number=number, type=kind, label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name
    return field


def _method(name: str, rule: http_pb2.HttpRule | None = None, *, public: bool = False) -> Any:
    method = descriptor_pb2.MethodDescriptorProto(
        name=name, input_type=f".{PACKAGE}.EchoRequest", output_type=f".{PACKAGE}.EchoRequest"
    )
    if rule is not None:
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    if public:
        method.options.Extensions[options_pb2.access].public = True
    return method


def _echo_contract() -> Any:
    """A contract the edge has never seen: adding it must need no edge code."""
    file = descriptor_pb2.FileDescriptorProto(
        name="launchpad/echotest/v1/echotest.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/api/annotations.proto", "launchpad/api/v1/options.proto"],
    )
    file.enum_type.add(name="Kind").value.extend(
        [
            descriptor_pb2.EnumValueDescriptorProto(name="KIND_UNSPECIFIED", number=0),
            descriptor_pb2.EnumValueDescriptorProto(name="KIND_BIG", number=1),
        ]
    )
    inner = file.message_type.add(name="Inner")
    inner.field.extend([_field("flag", 1, F.TYPE_BOOL), _field("count", 2, F.TYPE_INT64)])
    request = file.message_type.add(name="EchoRequest")
    request.field.extend(
        [
            _field("id", 1, F.TYPE_STRING),
            _field("inner", 2, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner"),
            _field("tags", 3, F.TYPE_STRING, repeated=True),
            _field("kind", 4, F.TYPE_ENUM, type_name=f".{PACKAGE}.Kind"),
            _field("path", 5, F.TYPE_STRING),
            _field("big", 6, F.TYPE_UINT64),
            _field("items", 7, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Inner", repeated=True),
        ]
    )
    get = http_pb2.HttpRule(get="/echo/{id}")
    get.additional_bindings.add(get="/v1/{id=shelves/*/books/*}")
    get.additional_bindings.add(get="/v1/{inner.count}/count")
    update = http_pb2.HttpRule(post="/echo/{id}:update", body="inner", response_body="inner")
    service = file.service.add(name="EchoService")
    service.method.extend(
        [
            _method("Get", get),
            _method("Update", update),
            _method("Files", http_pb2.HttpRule(get="/files/{path=**}"), public=True),
            _method("Create", http_pb2.HttpRule(post="/echo", body="*")),
            _method(
                "Erase", http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="PURGE", path="/echo/{id}"))
            ),
            _method("Internal"),  # no http option: no route
        ]
    )
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(f"{PACKAGE}.EchoService")
    except KeyError:
        pool.Add(file)
        return pool.FindServiceByName(f"{PACKAGE}.EchoService")


ECHO = _echo_contract()
EchoRequest = message_factory.GetMessageClass(ECHO.methods_by_name["Get"].input_type)


@dataclasses.dataclass
class Echo:
    client: httpx.AsyncClient
    seen: list[tuple[str, Any, dict[str, str]]]


@contextlib.asynccontextmanager
async def echo_edge() -> AsyncIterator[Echo]:
    seen: list[tuple[str, Any, dict[str, str]]] = []

    def handler(name: str) -> grpc.RpcMethodHandler:
        async def echo(request: Any, context: grpc.aio.ServicerContext) -> Any:
            seen.append((name, request, dict(context.invocation_metadata())))
            return request

        return grpc.unary_unary_rpc_method_handler(
            echo,
            request_deserializer=EchoRequest.FromString,
            response_serializer=EchoRequest.SerializeToString,
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                ECHO.full_name, {m.name: handler(m.name) for m in ECHO.methods}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = load_settings("edge")
    settings = dataclasses.replace(
        settings,
        peers=dataclasses.replace(
            settings.peers, addresses={**settings.peers.addresses, "echotest": f"127.0.0.1:{port}"}
        ),
    )
    app = create_app(
        settings,
        services=[ECHO],
        verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE),
        limiter=MemoryRateLimiter(),
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://edge"
        ) as client:
            client.headers["authorization"] = f"Bearer {make_token()}"
            yield Echo(client, seen)
    finally:
        await app.state.edge.backends.close()
        await server.stop(None)


@pytest.fixture
async def echo(settings_env: Any) -> AsyncIterator[Echo]:
    async with echo_edge() as running:
        yield running


# ---------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(
    ("template", "path", "openapi", "fields"),
    [
        ("/api/users/{id}", "/api/users/{p0}", "/api/users/{id}", ["id"]),
        ("/v1/{id=shelves/*/books/*}", "/v1/{p0:lp", "/v1/{id}", ["id"]),
        ("/files/{path=**}", "/files/{p0:path}", "/files/{path}", ["path"]),
        ("/v1/{inner.count}/count", "/v1/{p0}/count", "/v1/{inner.count}/count", ["inner.count"]),
        ("/echo/{id}:update", "/echo/{p0}:update", "/echo/{id}:update", ["id"]),
        ("/v1/*/echo", "/v1/{w1}/echo", "/v1/{w1}/echo", []),
    ],
)
def test_templates_compile_to_starlette_paths(
    template: str, path: str, openapi: str, fields: list[str]
) -> None:
    compiled, openapi_path, variables = templates.compile_template(template, EchoRequest.DESCRIPTOR)
    assert compiled.startswith(path)
    assert openapi_path == openapi
    assert [v.field for v in variables] == fields


@pytest.mark.parametrize(
    "template",
    ["echo/{id}", "/echo/{nope}", "/echo/{id.deeper}", "/echo/{id", "/echo/{inner}", "/echo/{tags}"],
)
def test_bad_templates_fail_at_start_up(template: str) -> None:
    with pytest.raises(ValueError):
        templates.compile_template(template, EchoRequest.DESCRIPTOR)


def test_every_http_binding_of_the_contracts_becomes_a_route() -> None:
    from google.api import annotations_pb2 as api

    specs, sockets = route_specs.build_specs(discovery.contract_services())
    routed = {(s.http_method, s.template) for s in specs}
    expected = set()
    for service in discovery.contract_services():
        for method in service.methods:
            options = method.GetOptions()
            if options.HasExtension(api.http):
                rule = options.Extensions[api.http]
                for binding in [rule, *rule.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    expected.add((verb.upper(), getattr(binding, verb)))
    assert routed == expected
    assert {("POST", "/api/auth/login"), ("GET", "/api/users"), ("POST", "/query")} <= routed
    assert {s.path for s in sockets} == {"/ws/realtime", "/ws/logs"}


def test_route_specs_carry_policy_deadline_and_backend() -> None:
    specs, _ = route_specs.build_specs(discovery.contract_services())
    by_template = {(s.http_method, s.template): s for s in specs}
    query = by_template[("POST", "/api/data/query")]
    assert (query.service, query.timeout_s, query.body, query.policy.public) == ("data", 35.0, "*", False)
    login = by_template[("POST", "/login")]
    assert login.policy.public and login.binding_index == 2 and login.operation_id == "AuthService_Login_3"
    assert by_template[("POST", "/api/policies")].body == "policy"


def test_literal_routes_are_tried_before_templates() -> None:
    specs, _ = route_specs.build_specs(discovery.contract_services())
    first_template = next(i for i, s in enumerate(specs) if s.variables)
    assert all(s.variables for s in specs[first_template:])


def test_contract_mistakes_fail_at_start_up() -> None:
    method = ECHO.methods_by_name["Get"]
    with pytest.raises(ValueError, match="bound twice"):
        route_specs.build_specs([ECHO, ECHO])
    with pytest.raises(ValueError, match="body"):
        route_specs._check_body(method, "nope", "")
    streaming = discovery.contract_services()
    logs = next(s for s in streaming if s.name == "LogsService").methods_by_name["Tail"]
    assert route_specs.method_routes(logs) == []  # streams are WebSocket routes, not http ones


# ---------------------------------------------------------------------------------- transcoding


async def test_path_variable_and_query_parameters(echo: Echo) -> None:
    response = await echo.client.get(
        "/echo/a%20b",
        params=[
            ("inner.flag", "true"),
            ("inner.count", "-3"),
            ("tags", "x"),
            ("tags", "y"),
            ("kind", "KIND_BIG"),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": "a b",
        "inner": {"flag": True, "count": -3},
        "tags": ["x", "y"],
        "kind": "KIND_BIG",
        "path": "",
        "big": 0,
        "items": [],
    }
    assert echo.seen[-1][0] == "Get"


async def test_lower_camel_query_names_and_ignored_unknown_parameters(echo: Echo) -> None:
    response = await echo.client.get("/echo/1?big=18446744073709551615&utm_source=x&inner.count=2")
    assert response.json()["big"] == 2**64 - 1
    assert response.json()["inner"]["count"] == 2


async def test_path_variables_win_over_query_parameters(echo: Echo) -> None:
    response = await echo.client.get("/echo/from-path?id=from-query")
    assert response.json()["id"] == "from-path"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("inner.count=x", "inner.count"),
        ("kind=HUGE", "kind"),
        ("inner.flag=yes", "inner.flag"),
        ("big=-1", "big"),
    ],
)
async def test_bad_query_values_are_400_naming_the_field(echo: Echo, query: str, field: str) -> None:
    response = await echo.client.get(f"/echo/1?{query}")
    assert response.status_code == 400
    assert f'"{field}"' in response.json()["message"]
    assert echo.seen == []


async def test_additional_bindings_with_patterns_and_nested_variables(echo: Echo) -> None:
    book = await echo.client.get("/v1/shelves/s1/books/b2")
    assert book.json()["id"] == "shelves/s1/books/b2"
    nested = await echo.client.get("/v1/42/count")
    assert nested.json()["inner"]["count"] == 42
    miss = await echo.client.get("/v1/shelves/s1/books")
    assert miss.status_code == 404


async def test_double_star_variable_spans_segments_and_public_needs_no_token(echo: Echo) -> None:
    response = await echo.client.get("/files/a/b/c.txt", headers={"authorization": ""})
    assert response.status_code == 200
    assert response.json()["path"] == "a/b/c.txt"
    metadata = echo.seen[-1][2]
    assert "authorization" not in metadata and "x-tenant-id" not in metadata
    assert metadata["x-request-id"] == response.headers["x-request-id"]


async def test_field_body_with_response_body(echo: Echo) -> None:
    response = await echo.client.post("/echo/7:update?tags=t", json={"flag": True, "count": "12"})
    assert response.status_code == 200, response.text
    assert response.json() == {"flag": True, "count": 12}  # response_body: only the inner field
    name, request, _ = echo.seen[-1]
    assert (name, request.id, list(request.tags), request.inner.count) == ("Update", "7", ["t"], 12)
    bad = await echo.client.post("/echo/7:update", json={"flag": True, "id": "x"})
    assert bad.status_code == 400 and 'unknown field "inner.id"' in bad.json()["message"]


async def test_star_body_ignores_query_parameters(echo: Echo) -> None:
    response = await echo.client.post("/echo?id=q", json={"id": "b", "items": [{"count": 1}, {}]})
    assert response.json()["id"] == "b"
    assert response.json()["items"] == [{"flag": False, "count": 1}, {"flag": False, "count": 0}]
    empty = await echo.client.post("/echo", content=b"", headers={"content-type": "application/json"})
    assert empty.status_code == 200 and empty.json()["id"] == ""


async def test_custom_verb_and_method_not_allowed(echo: Echo) -> None:
    purged = await echo.client.request("PURGE", "/echo/9")
    assert purged.status_code == 200 and echo.seen[-1][0] == "Erase"
    wrong = await echo.client.put("/echo/9", json={})
    assert wrong.status_code == 405


async def test_metadata_carries_the_verified_tenant_only(echo: Echo) -> None:
    token = make_token(tenant="initech")
    response = await echo.client.get(
        "/echo/1", headers={"authorization": f"Bearer {token}", "x-tenant-id": "evil", "x-custom": "1"}
    )
    assert response.status_code == 200
    metadata = echo.seen[-1][2]
    assert metadata["x-tenant-id"] == "initech"
    assert metadata["authorization"] == f"Bearer {token}"
    assert "x-custom" not in metadata


def test_a_contract_without_a_backend_address_fails_at_start_up(settings_env: Any) -> None:
    with pytest.raises(ValueError, match="no backend address for echotest"):
        create_app(
            load_settings("edge"), services=[ECHO], verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE)
        )
