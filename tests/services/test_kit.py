"""The service kit's interceptor and bootstrap, on a real grpc.aio server with a test-only servicer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from launchpad.api.v1 import status_pb2, status_pb2_grpc
from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.audit import verify_chain
from services.core.context import current_call, current_principal
from services.core.deps import Mode
from services.core.errors import InvalidArgument
from services.core.interceptors import DETAILS_KEY
from services.core.server import Runtime, ServiceSpec
from tests.support import TEST_PUBLIC_KEY, make_token, metadata, running_service


class EchoData(data_pb2_grpc.DataServiceServicer):
    """Test-only: answers with the caller's tenant, or fails on request."""

    async def Query(self, request, context):
        if request.sql == "bad":
            raise InvalidArgument("syntax error at or near 'bad'", position=1)
        if request.sql == "boom":
            raise RuntimeError("secret internal detail")
        current_call().audit["sha256"] = "abc"
        tenant = current_principal().tenant
        return data_pb2.QueryResponse(
            columns=[data_pb2.Column(name="tenant", type="text")], row_count=len(tenant)
        )

    async def Explain(self, request, context):  # a write RPC in spirit: reads the principal only
        return data_pb2.ExplainResponse(plan=current_principal().subject)


async def build(runtime: Runtime) -> list[ServiceSpec]:
    down = {"flag": False}

    async def check() -> None:
        if down["flag"]:
            raise ConnectionError("refused")

    runtime.deps.add("sql", Mode.EMBEDDED, "sqlite", check=check)
    runtime.closers.append(lambda: None)
    build.down = down  # type: ignore[attr-defined]
    descriptor = data_pb2.DESCRIPTOR.services_by_name["DataService"]
    return [ServiceSpec(descriptor, EchoData(), data_pb2_grpc.add_DataServiceServicer_to_server)]


@pytest.fixture
async def data(settings_env: Path):
    async with running_service("data", build) as (runtime, channel):
        yield runtime, data_pb2_grpc.DataServiceStub(channel), channel


async def test_authenticated_call_sees_the_token_tenant_not_a_header(data) -> None:
    _, stub, _ = data
    token = make_token(tenant="acme")
    response = await stub.Query(
        data_pb2.QueryRequest(sql="x"), metadata=metadata(token, x_tenant_id="evil-corp")
    )
    assert response.row_count == len("acme")


async def test_missing_request_id_is_rejected(data) -> None:
    _, stub, _ = data
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(make_token(), request_id=None))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-request-id" in err.value.details()


@pytest.mark.parametrize(
    "token",
    [
        None,
        "not-a-jwt",
        "forged-wrong-key",
        "expired",
        "alg-none",
        "hs256-with-public-key",
        "wrong-audience",
    ],
)
async def test_bad_tokens_are_unauthenticated(data, token) -> None:
    _, stub, _ = data
    value = _bad_token(token)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(value))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _bad_token(kind: str | None) -> str | None:
    from cryptography.hazmat.primitives import serialization

    claims = {"sub": "a", "tenant": "acme", "roles": ["admin"], "iss": "launchpad-auth", "aud": "launchpad"}
    if kind is None or kind == "not-a-jwt":
        return kind
    if kind == "forged-wrong-key":
        return make_token(key=ec.generate_private_key(ec.SECP256R1()))
    if kind == "expired":
        return make_token(ttl=-10)
    if kind == "wrong-audience":
        return make_token(aud="someone-else")
    if kind == "alg-none":
        return jwt.encode({**claims, "exp": 2**31}, None, algorithm="none", headers={"kid": "test-key-1"})
    pem = TEST_PUBLIC_KEY.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "test-key-1", "typ": "JWT"}
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{b64(orjson.dumps(header))}.{b64(orjson.dumps({**claims, 'exp': 2**31}))}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def test_service_error_maps_to_status_with_details(data) -> None:
    _, stub, _ = data
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(data_pb2.QueryRequest(sql="bad"), metadata=metadata(make_token()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "syntax error at or near 'bad'"
    trailing = dict(err.value.trailing_metadata())
    assert orjson.loads(trailing[DETAILS_KEY]) == [{"position": 1}]


async def test_unexpected_exception_is_internal_without_its_text(data) -> None:
    _, stub, _ = data
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(
            data_pb2.QueryRequest(sql="boom"), metadata=metadata(make_token(), request_id="r-42")
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in err.value.details()
    assert "r-42" in err.value.details()


async def test_every_call_is_audited_in_one_chain(data) -> None:
    runtime, stub, _ = data
    await stub.Query(
        data_pb2.QueryRequest(sql="x"), metadata=metadata(make_token(sub="bob"), request_id="ok-1")
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(None, request_id="no-token"))
    lines = [orjson.loads(line) for line in runtime.audit.path.read_bytes().splitlines()]
    ok = next(e for e in lines if e["request_id"] == "ok-1")
    assert ok["actor"] == "bob" and ok["tenant"] == "acme" and ok["outcome"] == "ok" and ok["sha256"] == "abc"
    refused = next(e for e in lines if e["request_id"] == "no-token")
    assert refused["code"] == "UNAUTHENTICATED" and refused["outcome"] == "error"
    assert verify_chain(runtime.audit.path).ok


async def test_health_follows_required_dependency(data) -> None:
    runtime, _, channel = data
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="launchpad.data.v1.DataService")
    assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
    build.down["flag"] = True  # type: ignore[attr-defined]
    from services.core import server

    await server._publish_health(runtime, ["launchpad.data.v1.DataService"])
    assert (await health.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING
    status = await status_pb2_grpc.StatusServiceStub(channel).GetStatus(
        status_pb2.GetStatusRequest(), metadata=metadata()
    )
    assert status.env == "SIM"
    assert status.dependencies[0].name == "sql" and not status.dependencies[0].healthy
    assert "refused" in status.dependencies[0].detail


async def test_concurrent_calls_keep_their_own_context(data) -> None:
    _, stub, _ = data
    tenants = [f"t{i}" for i in range(20)]
    responses = await asyncio.gather(
        *(
            stub.Query(data_pb2.QueryRequest(sql="x"), metadata=metadata(make_token(tenant=t)))
            for t in tenants
        )
    )
    assert [r.row_count for r in responses] == [len(t) for t in tenants]
