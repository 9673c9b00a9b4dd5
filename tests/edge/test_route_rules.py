"""Per-route edge rules: each request gets the rule of the route it is served by, found once, and contract
options that would be unsafe or ignored fail at start-up.

The contracts here are defined at run time (launchpad.ruletest.v1 and friends, never served in production).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor

from edge.app import create_app
from edge.middleware.rate_limit import MemoryRateLimiter
from edge.transcoding import specs as route_specs
from launchpad.api.v1 import options_pb2
from services.core.config import load_settings
from services.core.tokens import TokenVerifier
from tests.support import AUDIENCE, ISSUER, TEST_KEYS

F = descriptor_pb2.FieldDescriptorProto
M = descriptor_pb2.MethodDescriptorProto
STORAGE = ".launchpad.storage.v1"
SCRIPT = orjson.dumps({"note": "<script>alert(1)</script>"})
JSON = {"content-type": "application/json"}
OCTETS = {"content-type": "application/octet-stream"}


def contract(name: str, *methods: M) -> ServiceDescriptor:
    """Service launchpad.<name>.v1.Svc with `methods`; message NoteRequest {bucket, key, note} is defined."""
    package = f"launchpad.{name}.v1"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"launchpad/{name}/v1/{name}.proto",
        package=package,
        syntax="proto3",
        dependency=[
            "google/api/annotations.proto",
            "launchpad/api/v1/options.proto",
            "launchpad/storage/v1/storage.proto",
        ],
    )
    note = file.message_type.add(name="NoteRequest")
    for number, field in enumerate(("bucket", "key", "note"), start=1):
        note.field.add(name=field, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    for method in methods:
        method.input_type = method.input_type or f".{package}.NoteRequest"
        method.output_type = method.output_type or f".{package}.NoteRequest"
    file.service.add(name="Svc").method.extend(methods)
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(f"{package}.Svc")
    except KeyError:
        pool.Add(file)
        return pool.FindServiceByName(f"{package}.Svc")


def rpc(name: str, rule: http_pb2.HttpRule | None = None, **options: Any) -> M:
    """A unary method with an http rule and (launchpad.api.v1) options: edge=EdgeRule, access=Access, ..."""
    method = M(name=name)
    if rule is not None:
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    for option, value in options.items():
        method.options.Extensions[getattr(options_pb2, option)].CopyFrom(value)
    return method


def upload(name: str, path: str, **options: Any) -> M:
    """A byte_stream PUT (client stream of WriteObjectRequest), public like the storage contract's."""
    method = rpc(name, byte_stream=options_pb2.ByteStreamRule(path=path), **options)
    method.input_type, method.output_type = f"{STORAGE}.WriteObjectRequest", f"{STORAGE}.WriteObjectResponse"
    method.client_streaming = True
    if "access" not in options:
        method.options.Extensions[options_pb2.access].public = True
    return method


def download(name: str, path: str, **options: Any) -> M:
    """A byte_stream GET (server stream of ReadObjectResponse), public like the storage contract's."""
    method = rpc(name, byte_stream=options_pb2.ByteStreamRule(path=path), **options)
    method.input_type, method.output_type = f"{STORAGE}.ReadObjectRequest", f"{STORAGE}.ReadObjectResponse"
    method.server_streaming = True
    if "access" not in options:
        method.options.Extensions[options_pb2.access].public = True
    return method


SIGNED = options_pb2.EdgeRule(waf_skip=True, raw_body=True, upload_body=True)
PUBLIC = options_pb2.Access(public=True)

# Opaque signed uploads on a templated path, and two RPCs without any rule: one on the same path (another
# verb), one on a literal path the template also matches. Neither may inherit the upload's exemptions.
RULES = contract(
    "ruletest",
    upload("Write", "/files/{bucket}/{key=**}", edge=SIGNED),
    rpc("Annotate", http_pb2.HttpRule(post="/files/{bucket}/{key=**}", body="*"), access=PUBLIC),
    rpc("Literal", http_pb2.HttpRule(post="/files/lit/x", body="*"), access=PUBLIC),
)


@pytest.fixture
async def edge(settings_env: Any) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    settings = load_settings("edge")
    settings = dataclasses.replace(
        settings,
        peers=dataclasses.replace(
            settings.peers, addresses={**settings.peers.addresses, "ruletest": "127.0.0.1:9"}
        ),
    )
    app = create_app(
        settings,
        services=[RULES],
        verifier=TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE),
        limiter=MemoryRateLimiter(),
    )

    def client(root_path: str = "") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        return httpx.AsyncClient(transport=transport, base_url=f"http://edge{root_path}")

    try:
        yield client
    finally:
        await app.state.edge.backends.close()


async def test_a_verb_without_a_rule_does_not_inherit_another_verbs_rule(edge: Any) -> None:
    async with edge() as client:
        hostile = await client.post("/files/b/k", content=SCRIPT, headers=JSON)
        raw = await client.post("/files/b/k", content=b"\x00\x01", headers=OCTETS)
        large = await client.post("/files/b/k", content=b"{}" + b" " * (2 * 1024 * 1024), headers=JSON)
    assert hostile.status_code == 403, hostile.text
    assert raw.status_code == 415, raw.text
    assert large.status_code == 413, large.text


async def test_a_literal_route_does_not_inherit_a_matching_templates_rule(edge: Any) -> None:
    async with edge() as client:
        hostile = await client.post("/files/lit/x", content=SCRIPT, headers=JSON)
        raw = await client.post("/files/lit/x", content=b"\x00\x01", headers=OCTETS)
    assert hostile.status_code == 403, hostile.text
    assert raw.status_code == 415, raw.text


async def test_the_rule_follows_the_route_behind_a_root_path(edge: Any) -> None:
    """The route is found as the router finds it (root_path stripped), so its rule applies there too."""
    async with edge("/edge") as client:  # base URL http://edge/edge: the paths below are under /edge
        raw = await client.put("/files/b/k", content=b"\x00\x01", headers=OCTETS)
        hostile = await client.post("/files/b/k", content=SCRIPT, headers=JSON)
    assert raw.request.url.path == "/edge/files/b/k"
    assert raw.status_code == 503, raw.text  # past the middleware: the (absent) backend answers
    assert "ruletest" in raw.json()["message"]
    assert hostile.status_code == 403, hostile.text


async def test_a_wrong_verb_on_a_ruled_path_gets_the_strict_rule(edge: Any) -> None:
    async with edge() as client:
        response = await client.patch("/files/b/k", content=SCRIPT, headers=JSON)
    assert response.status_code == 403, response.text


# --- contract options that would be unsafe or ignored fail at start-up -----------------------------------


def _fails(name: str, method: M, *words: str) -> None:
    service = contract(name, method)
    with pytest.raises(ValueError) as failure:
        route_specs.build_specs([service])
        route_specs.byte_stream_specs([service])
    message = str(failure.value)
    assert f"{service.full_name}.{method.name}" in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("option", ["waf_skip", "raw_body", "upload_body"])
def test_byte_stream_exemptions_on_an_http_method_fail(option: str) -> None:
    edge_rule = options_pb2.EdgeRule(**{option: True})
    method = rpc("Run", http_pb2.HttpRule(post="/api/x", body="*"), edge=edge_rule)
    _fails(f"badhttp{option.replace('_', '')}", method, option, "byte_stream")


def test_an_edge_option_on_a_websocket_method_fails() -> None:
    method = rpc(
        "Watch",
        websocket=options_pb2.WebSocketRule(path="/ws/x"),
        edge=options_pb2.EdgeRule(waf_fields=[options_pb2.WafField(field="note", only=["log4shell"])]),
    )
    method.server_streaming = True
    _fails("badwsedge", method, "edge", "http")


def test_an_edge_option_on_an_unrouted_method_fails() -> None:
    _fails("badnoroute", rpc("Run", edge=options_pb2.EdgeRule(waf_skip=True)), "edge", "http")


def test_a_byte_stream_needs_public_access() -> None:
    method = upload("Write", "/files/{bucket}/{key=**}", access=options_pb2.Access(roles=["admin"]))
    _fails("badbsaccess", method, "public")


def test_request_body_options_on_a_download_fail() -> None:
    """A GET has no body: raw_body and upload_body there could only mislead."""
    method = download("Read", "/files/{bucket}/{key=**}", edge=SIGNED)
    _fails("badbsread", method, "raw_body", "upload_body")


def test_a_byte_stream_on_other_messages_fails() -> None:
    method = upload("Write", "/files/{bucket}/{key=**}")
    method.input_type = ".launchpad.storage.v1.ReadObjectRequest"  # has a signature, but is not a write
    _fails("badbsmessage", method, "WriteObjectRequest")


@pytest.mark.parametrize(
    "routing",
    [
        {"rule": http_pb2.HttpRule(post="/api/x", body="*")},
        {"websocket": options_pb2.WebSocketRule(path="/ws/x")},
        {"byte_stream": options_pb2.ByteStreamRule(path="/files/{bucket}/{key=**}")},
    ],
    ids=["http", "websocket", "byte_stream"],
)
def test_an_internal_method_with_a_routing_option_fails(routing: dict[str, Any]) -> None:
    internal = options_pb2.Access(internal=True)
    if "byte_stream" in routing:
        method = upload("Run", routing["byte_stream"].path, access=internal)
    else:
        method = rpc("Run", access=internal, **routing)
        method.server_streaming = "websocket" in routing
    _fails(f"badinternal{next(iter(routing)).replace('_', '')}", method, "internal")


def test_the_contracts_pass_the_checks() -> None:
    from edge.transcoding.discovery import contract_services

    services = contract_services()
    route_specs.build_specs(services)
    assert {spec.method.name for spec in route_specs.byte_stream_specs(services)} == {
        "ReadObject",
        "WriteObject",
    }
