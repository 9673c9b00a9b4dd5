"""The edge end to end: real grpc.aio servers (the service kit, test servicers of the real contracts) behind
the real app, driven over HTTP with httpx.

The helpers at the top (test servicers, `kit_server`, `edge_stack`) are shared by the other tests/edge modules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from edge import clients, codec
from edge.app import create_app
from edge.middleware.rate_limit import MemoryRateLimiter
from edge.transcoding.endpoint import RpcEndpoint
from edge.transcoding.table import RouteTable
from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from launchpad.data.v1 import data_pb2, data_pb2_grpc
from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.core.config import load_settings
from services.core.context import current_principal
from services.core.deps import Mode
from services.core.errors import Code, ServiceError
from services.core.server import Runtime, ServiceSpec, create_server, new_runtime
from tests.support import AUDIENCE, ISSUER, TEST_JWKS, TEST_KEYS, TEST_KID, free_address, make_token

# ------------------------------------------------------------------------------------ test servicers


class DataServicer(data_pb2_grpc.DataServiceServicer):
    """DataService for edge tests: records what the backend saw and answers by the SQL text.

    "SELECT 1" -> [[1]]; "ECHO" -> one row holding the request's params; "RAISE <CODE> msg" -> that status
    (with details); "SLEEP <ms>" -> answers after that long.
    """

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def Query(self, request: data_pb2.QueryRequest, context: Any) -> data_pb2.QueryResponse:
        principal = current_principal()
        self.seen.append(
            {"metadata": list(context.invocation_metadata()), "tenant": principal.tenant, "request": request}
        )
        word, _, rest = request.sql.partition(" ")
        if word == "RAISE":
            code, _, message = rest.partition(" ")
            raise ServiceError(message, code=Code[code], position=7)
        if word == "SLEEP":
            await asyncio.sleep(int(rest) / 1000)
        if word == "ECHO":
            rows = [data_pb2.Row(values=request.params)]
        else:
            rows = [data_pb2.Row(values=[data_pb2.Cell(int=1)])]
        return data_pb2.QueryResponse(
            columns=[data_pb2.Column(name="?column?", type="integer")],
            rows=rows,
            row_count=len(rows),
            elapsed_ms=0.25,
            backend="sqlite",
        )

    async def ListTables(self, request: Any, context: Any) -> data_pb2.ListTablesResponse:
        table = data_pb2.Table(name="t", columns=[data_pb2.TableColumn(name="id", type="integer")])
        return data_pb2.ListTablesResponse(tables=[table], backend="sqlite")


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """AuthService for edge tests: serves the test JWKS (the edge verifies with it) and echoes requests."""

    def __init__(self) -> None:
        self.jwks_calls = 0

    async def GetJwks(self, request: Any, context: Any) -> auth_pb2.GetJwksResponse:
        self.jwks_calls += 1
        response = auth_pb2.GetJwksResponse()
        codec.decoder(response.DESCRIPTOR)(response, TEST_JWKS, "")
        return response

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        if request.password != "right":
            raise ServiceError("invalid username or password", code=Code.UNAUTHENTICATED)
        token = make_token(sub=request.username)
        return auth_pb2.LoginResponse(token=token, token_type="Bearer", expires_in=300)

    async def ListUsers(self, request: Any, context: Any) -> auth_pb2.ListUsersResponse:
        return auth_pb2.ListUsersResponse(
            users=[auth_pb2.User(username="alice", tenant=current_principal().tenant)]
        )

    async def GetUser(self, request: auth_pb2.GetUserRequest, context: Any) -> auth_pb2.GetUserResponse:
        return auth_pb2.GetUserResponse(user=auth_pb2.User(username=request.username))

    async def UpdateUser(
        self, request: auth_pb2.UpdateUserRequest, context: Any
    ) -> auth_pb2.UpdateUserResponse:
        user = auth_pb2.User(username=request.username, roles=request.roles, disabled=request.disabled)
        return auth_pb2.UpdateUserResponse(user=user)

    async def CreatePolicy(
        self, request: auth_pb2.CreatePolicyRequest, context: Any
    ) -> auth_pb2.CreatePolicyResponse:
        policy = auth_pb2.Policy()
        policy.CopyFrom(request.policy)
        policy.tenant = current_principal().tenant
        return auth_pb2.CreatePolicyResponse(policy=policy)


class StorageServicer(storage_pb2_grpc.StorageServiceServicer):
    """ListObjects echoes its path and query parameters back as one object."""

    async def ListObjects(self, request: storage_pb2.ListObjectsRequest, context: Any) -> Any:
        info = storage_pb2.ObjectInfo(path=f"{request.bucket}/{request.prefix}", size=request.page_size)
        return storage_pb2.ListObjectsResponse(objects=[info], next_page_token=request.page_token)


def spec(module: Any, service: str, servicer: Any) -> ServiceSpec:
    grpc_module = {data_pb2: data_pb2_grpc, auth_pb2: auth_pb2_grpc, storage_pb2: storage_pb2_grpc}[module]
    return ServiceSpec(
        module.DESCRIPTOR.services_by_name[service],
        servicer,
        getattr(grpc_module, f"add_{service}Servicer_to_server"),
    )


# ------------------------------------------------------------------------------------------- harness


@contextlib.asynccontextmanager
async def kit_server(
    name: str, *specs: ServiceSpec, deps: tuple[tuple[str, Mode], ...] = ()
) -> AsyncIterator[str]:
    """A real service-kit server (interceptor, health, StatusService) on port 0; yields its address."""
    runtime: Runtime = new_runtime(load_settings(name))
    runtime.keys = TEST_KEYS
    for dep_name, mode in deps:
        runtime.deps.add(dep_name, mode, "embedded://test")
    server, port = await create_server(runtime, list(specs), port=0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await runtime.close()


@dataclasses.dataclass
class Stack:
    app: FastAPI
    client: httpx.AsyncClient
    data: DataServicer
    auth: AuthServicer


def edge_app(addresses: dict[str, str], **overrides: Any) -> FastAPI:
    settings = load_settings("edge")
    settings = dataclasses.replace(
        settings,
        peers=dataclasses.replace(settings.peers, addresses={**settings.peers.addresses, **addresses}),
    )
    overrides.setdefault("limiter", MemoryRateLimiter())
    return create_app(settings, **overrides)


@contextlib.asynccontextmanager
async def edge_stack(**overrides: Any) -> AsyncIterator[Stack]:
    """data, auth and storage test servers and the edge in front of them (tokens verified via GetJwks)."""
    data, auth = DataServicer(), AuthServicer()
    async with (
        kit_server("data", spec(data_pb2, "DataService", data)) as data_addr,
        kit_server("auth", spec(auth_pb2, "AuthService", auth)) as auth_addr,
        kit_server("storage", spec(storage_pb2, "StorageService", StorageServicer())) as storage_addr,
    ):
        app = edge_app({"data": data_addr, "auth": auth_addr, "storage": storage_addr}, **overrides)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            try:
                yield Stack(app, client, data, auth)
            finally:
                await app.state.edge.backends.close()


def endpoint(app: FastAPI, path: str) -> RpcEndpoint:
    """The RpcEndpoint serving a literal contract path."""
    table = next(r for r in app.router.routes if isinstance(r, RouteTable))
    return next(r.app for r in table.routes if r.path == path)


def bearer(token: str | None = None, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {token or make_token(**claims)}"}


@pytest.fixture
async def stack(settings_env: Any) -> AsyncIterator[Stack]:
    async with edge_stack() as running:
        yield running


# ------------------------------------------------------------------------------------------ the tests


async def test_select_one_comes_back_as_integer_rows(stack: Stack) -> None:
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=bearer())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == [[1]]
    assert body["columns"] == [{"name": "?column?", "type": "integer"}]
    assert body["row_count"] == 1 and type(body["row_count"]) is int
    assert body["truncated"] is False and body["affected_rows"] == 0  # unpopulated fields are emitted
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]


async def test_additional_binding_reaches_the_same_rpc(stack: Stack) -> None:
    response = await stack.client.post("/query", json={"sql": "SELECT 1"}, headers=bearer())
    assert response.json()["rows"] == [[1]]
    users = await stack.client.get("/api/users", headers=bearer())
    also = await stack.client.get("/api/auth/users", headers=bearer())
    assert users.json() == also.json() == {"users": [_user("alice", "acme")]}


def _user(name: str, tenant: str = "") -> dict[str, Any]:
    return {
        "username": name,
        "roles": [],
        "tenant": tenant,
        "disabled": False,
        "created_at": None,
        "updated_at": None,
        "created_by": "",
    }


async def test_cells_round_trip_with_exact_integers(stack: Stack) -> None:
    params = [2**63 - 1, -(2**63), "text", None, 1.5, True, {"a": [1, "b"]}]
    response = await stack.client.post(
        "/api/data/query", json={"sql": "ECHO", "params": params}, headers=bearer()
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [params]
    assert b"9223372036854775807" in response.content  # a JSON number, not a string and not a float


async def test_lower_camel_names_are_accepted_on_input(stack: Stack) -> None:
    body = {"sql": "ECHO", "maxRows": 5, "timeoutMs": 100}
    response = await stack.client.post("/api/data/query", json=body, headers=bearer())
    assert response.status_code == 200
    seen = stack.data.seen[-1]["request"]
    assert (seen.max_rows, seen.timeout_ms) == (5, 100)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"sql": "SELECT 1", "bogus": 1}', "bogus", "unknown field"),
        (b'{"sql": 42}', "sql", "expected a string"),
        (b'{"sql": "x", "max_rows": "many"}', "max_rows", "not an integer"),
        (b'{"sql": "x", "max_rows": -1}', "max_rows", "out of range"),
        (b'{"sql": "x", "params": [1, [1, 2e400]]}', "", "not valid JSON"),
        (b'{"sql": "x", "params": {"a": 1}}', "params", "expected an array"),
        (b'{"sql": "SELECT 1"', "", "not valid JSON"),
        (b"[1, 2]", "", "expected an object"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(stack: Stack, body: bytes, field: str, words: str) -> None:
    headers = {**bearer(), "content-type": "application/json"}
    response = await stack.client.post("/api/data/query", content=body, headers=headers)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == Code.INVALID_ARGUMENT
    assert words in error["message"]
    if field:
        assert f'"{field}"' in error["message"]
    assert error["details"][0]["field"] == field
    assert error["request_id"] == response.headers["x-request-id"]
    assert stack.data.seen == []  # nothing reached the backend


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("INVALID_ARGUMENT", 400),
        ("FAILED_PRECONDITION", 400),
        ("OUT_OF_RANGE", 400),
        ("UNAUTHENTICATED", 401),
        ("PERMISSION_DENIED", 403),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("ABORTED", 409),
        ("RESOURCE_EXHAUSTED", 429),
        ("CANCELLED", 499),
        ("UNIMPLEMENTED", 501),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
    ],
)
async def test_backend_status_maps_to_http(stack: Stack, code: str, status: int) -> None:
    sql = f"RAISE {code} boom at position 7"
    response = await stack.client.post("/api/data/query", json={"sql": sql}, headers=bearer())
    assert response.status_code == status
    body = response.json()
    assert body["code"] == Code[code]
    assert body["message"] == "boom at position 7"
    assert body["details"] == [{"position": 7}]  # from the launchpad-error-details-bin trailer
    assert body["request_id"] == response.headers["x-request-id"]


async def test_internal_backend_errors_do_not_leak_their_message(stack: Stack) -> None:
    response = await stack.client.post(
        "/api/data/query", json={"sql": "RAISE INTERNAL /srv/secret.py line 3"}, headers=bearer()
    )
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["message"] == "internal error in the data service"


async def test_grpc_timeout_header_lowers_the_deadline(stack: Stack) -> None:
    headers = {**bearer(), "grpc-timeout": "100m"}
    started = time.monotonic()
    response = await stack.client.post("/api/data/query", json={"sql": "SLEEP 2000"}, headers=headers)
    assert response.status_code == 504
    assert response.json()["code"] == Code.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


async def test_grpc_timeout_header_cannot_raise_the_deadline(stack: Stack) -> None:
    endpoint(stack.app, "/api/data/query").timeout_s = 0.1  # the route's default deadline, for this test
    headers = {**bearer(), "grpc-timeout": "30S"}
    started = time.monotonic()
    response = await stack.client.post("/api/data/query", json={"sql": "SLEEP 1000"}, headers=headers)
    assert response.status_code == 504
    assert time.monotonic() - started < 0.9


async def test_malformed_grpc_timeout_is_400(stack: Stack) -> None:
    headers = {**bearer(), "grpc-timeout": "soon"}
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=headers)
    assert response.status_code == 400
    assert "grpc-timeout" in response.json()["message"]


async def test_tenant_header_spoofing_has_no_effect(stack: Stack) -> None:
    headers = {**bearer(tenant="acme"), "x-tenant-id": "globex"}
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=headers)
    assert response.status_code == 200
    seen = stack.data.seen[-1]
    tenant_headers = [value for key, value in seen["metadata"] if key == "x-tenant-id"]
    assert tenant_headers == ["acme"]
    assert seen["tenant"] == "acme"


async def test_request_id_is_forwarded_to_the_backend(stack: Stack) -> None:
    headers = {**bearer(), "x-request-id": "req-abc-123"}
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=headers)
    assert response.headers["x-request-id"] == "req-abc-123"
    assert ("x-request-id", "req-abc-123") in stack.data.seen[-1]["metadata"]


def _forged(header: dict[str, Any], payload: dict[str, Any], key: Any, algorithm: str) -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers=header)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": "mallory", "tenant": "acme", "roles": ["admin"], "iat": now, "exp": now + 300}
    return {**claims, "iss": ISSUER, "aud": AUDIENCE, **overrides}


def _alg_none_token() -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'kid': TEST_KID})}.{part(_claims())}."


def _hs256_with_public_key() -> str:
    from services.core.tokens import StaticKeys

    assert isinstance(TEST_KEYS, StaticKeys)
    pem = TEST_KEYS._keys[TEST_KID].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing = part({"alg": "HS256", "kid": TEST_KID, "typ": "JWT"}) + b"." + part(_claims())
    signature = base64.urlsafe_b64encode(hmac.new(pem, signing, hashlib.sha256).digest()).rstrip(b"=")
    return (signing + b"." + signature).decode()


BAD_TOKENS = {
    "expired": lambda: make_token(ttl=-60),
    "wrong key": lambda: make_token(key=ec.generate_private_key(ec.SECP256R1())),
    "unknown kid": lambda: make_token(kid="someone-else"),
    "alg none": _alg_none_token,
    "HS256 with the public key": _hs256_with_public_key,
    "wrong audience": lambda: make_token(aud="another-app"),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_are_401_before_any_backend_call(stack: Stack, kind: str) -> None:
    response = await stack.client.post(
        "/api/data/query", json={"sql": "SELECT 1"}, headers=bearer(BAD_TOKENS[kind]())
    )
    assert response.status_code == 401, response.text
    assert response.json()["code"] == Code.UNAUTHENTICATED
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stack.data.seen == []


@pytest.mark.parametrize("header", [None, "Basic YWxpY2U6c2VjcmV0", "Bearer "])
async def test_missing_or_malformed_authorization_is_401(stack: Stack, header: str | None) -> None:
    headers = {"authorization": header} if header is not None else {}
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=headers)
    assert response.status_code == 401
    assert stack.data.seen == []


async def test_public_rpc_needs_no_token_and_gets_no_identity(stack: Stack) -> None:
    response = await stack.client.post("/api/auth/login", json={"username": "bob", "password": "right"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and body["user"] is None
    wrong = await stack.client.post("/auth/login", json={"username": "bob", "password": "wrong"})
    assert wrong.status_code == 401
    assert wrong.json()["message"] == "invalid username or password"


async def test_keys_come_from_the_auth_service_once(stack: Stack) -> None:
    for _ in range(3):
        response = await stack.client.get("/api/data/tables", headers=bearer())
        assert response.status_code == 200
    assert stack.auth.jwks_calls == 1


async def test_path_parameters_and_field_body(stack: Stack) -> None:
    user = await stack.client.get("/api/auth/users/carol%20d", headers=bearer())
    assert user.json()["user"]["username"] == "carol d"
    patched = await stack.client.patch(
        "/api/users/dave", json={"roles": ["viewer"], "disabled": True}, headers=bearer(roles=("admin",))
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["user"] | {"created_at": None} == {
        **_user("dave"),
        "roles": ["viewer"],
        "disabled": True,
    }
    policy = {"name": "p1", "rules": [{"effect": "allow", "actions": ["read"], "condition": {"record.x": 1}}]}
    created = await stack.client.post("/api/policies", json=policy, headers=bearer(roles=("admin",)))
    assert created.status_code == 200, created.text
    back = created.json()["policy"]
    assert back["name"] == "p1" and back["tenant"] == "acme"
    assert back["rules"][0]["condition"] == {"record.x": 1}
    assert back["rules"][0]["resource"] == ""


async def test_field_body_rejects_fields_of_the_request_message(stack: Stack) -> None:
    response = await stack.client.post(
        "/api/policies", json={"policy": {"name": "x"}}, headers=bearer(roles=("admin",))
    )
    assert response.status_code == 400
    assert 'unknown field "policy.policy"' in response.json()["message"]


async def test_query_parameters_fill_request_fields(stack: Stack) -> None:
    response = await stack.client.get(
        "/api/storage/buckets/photos/objects",
        params={"prefix": "2024/", "pageSize": "50", "page_token": "abc", "cachebuster": "1"},
        headers=bearer(),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["objects"][0]["path"] == "photos/2024/"
    assert body["objects"][0]["size"] == 50
    assert body["next_page_token"] == "abc"
    bad = await stack.client.get("/api/storage/buckets/photos/objects?page_size=x", headers=bearer())
    assert bad.status_code == 400 and '"page_size"' in bad.json()["message"]


async def test_backend_down_is_503_naming_the_service(settings_env: Any) -> None:
    app = edge_app({"data": free_address()}, verifier=_static_verifier())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        response = await client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=bearer())
    await app.state.edge.backends.close()
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == Code.UNAVAILABLE
    assert "data service" in body["message"]
    assert "127.0.0.1" not in body["message"]


async def test_auth_service_down_is_503_not_401(settings_env: Any) -> None:
    app = edge_app({"auth": free_address(), "data": free_address()})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://edge") as client:
        response = await client.get("/api/data/tables", headers=bearer())
    await app.state.edge.backends.close()
    assert response.status_code == 503
    assert "auth service" in response.json()["message"]


def _static_verifier() -> Any:
    from services.core.tokens import TokenVerifier

    return TokenVerifier(TEST_KEYS, ISSUER, AUDIENCE)


async def test_unknown_path_and_wrong_method_use_the_error_shape(stack: Stack) -> None:
    missing = await stack.client.get("/api/nothing-here", headers=bearer())
    assert missing.status_code == 404
    assert missing.json()["code"] == Code.NOT_FOUND
    wrong = await stack.client.delete("/api/data/query", headers=bearer())
    assert wrong.status_code == 405
    assert wrong.json()["code"] == Code.UNIMPLEMENTED


async def test_unexpected_edge_error_is_a_generic_500(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(response: Any) -> Any:
        raise RuntimeError("secret internals at /srv/edge.py")

    monkeypatch.setattr(endpoint(stack.app, "/api/data/query"), "encode", explode)
    response = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=bearer())
    assert response.status_code == 500
    body = response.json()
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["request_id"] in body["message"]


async def test_middleware_is_wired_in(stack: Stack) -> None:
    wrong_type = await stack.client.post(
        "/api/data/query", content=b"sql=1", headers={**bearer(), "content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415
    too_big = await stack.client.post(
        "/api/data/query",
        content=b"x" * (2 * 1024 * 1024 + 1),
        headers={**bearer(), "content-type": "application/json"},
    )
    assert too_big.status_code == 413
    blocked = await stack.client.post(
        "/api/policies", json={"name": "<script>alert(1)</script>"}, headers=bearer()
    )
    assert blocked.status_code == 403
    preflight = await stack.client.options(
        "/api/data/query",
        headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
    )
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert stack.data.seen == []


async def test_cors_headers_on_browser_requests_including_errors(stack: Stack) -> None:
    origin = {"origin": "http://localhost:3000"}
    ok = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers={**bearer(), **origin})
    assert ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-request-id" in ok.headers["access-control-expose-headers"]
    refused = await stack.client.post("/api/data/query", json={"sql": "SELECT 1"}, headers=origin)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"  # readable by the UI
    stranger = await stack.client.get(
        "/api/data/tables", headers={**bearer(), "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers
    plain = await stack.client.get("/api/data/tables", headers=bearer())
    assert "access-control-allow-origin" not in plain.headers


async def test_rate_limit_answers_429_with_retry_after(
    settings_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_RATE_LIMIT_PER_MINUTE", "2")
    async with edge_stack() as running:
        statuses = [
            (await running.client.get("/api/data/tables", headers=bearer())).status_code for _ in range(3)
        ]
        refused = await running.client.get("/api/data/tables", headers=bearer())
    assert statuses[:2] == [200, 200]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1


async def test_metrics_count_requests_by_route_template(stack: Stack) -> None:
    await stack.client.get("/api/auth/users/erin", headers=bearer())
    await stack.client.post("/api/data/query", json={"sql": "RAISE NOT_FOUND gone"}, headers=bearer())
    text = (await stack.client.get("/metrics")).text
    assert (
        'launchpad_edge_http_requests_total{method="GET",route="/api/auth/users/{username}",status="200"}'
        in text
    )
    assert 'route="/api/auth/users/erin"' not in text
    assert 'launchpad_edge_backend_errors_total{code="NOT_FOUND",service="data"}' in text
    assert "launchpad_edge_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    ("header", "seconds"), [("1H", 3600.0), ("2M", 120.0), ("3S", 3.0), ("500m", 0.5), ("250u", 0.00025)]
)
def test_grpc_timeout_units(header: str, seconds: float) -> None:
    assert clients.parse_grpc_timeout(header) == pytest.approx(seconds)
    assert clients.deadline(10.0, header) == pytest.approx(min(10.0, seconds))


@pytest.mark.parametrize("header", ["", "1.5S", "5s", "123456789S", "S", "-1S"])
def test_grpc_timeout_rejects_what_the_spec_does_not_allow(header: str) -> None:
    with pytest.raises(ServiceError):
        clients.parse_grpc_timeout(header)
