"""Every RPC of the built services, called directly over gRPC: without x-request-id it is rejected, and
without a token every non-public RPC is UNAUTHENTICATED -- checked from the contracts, so a new RPC is
covered the day it is added."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from launchpad.ai.v1 import ai_pb2
from launchpad.auth.v1 import auth_pb2
from launchpad.data.v1 import data_pb2
from services.ai.servicer import build as build_ai
from services.auth.app import build as build_auth
from services.core.contracts import method_policy, wire_name
from services.data.servicer import build as build_data
from tests.support import metadata, running_service

SERVICES = {
    "data": (build_data, data_pb2.DESCRIPTOR.services_by_name["DataService"]),
    "auth": (build_auth, auth_pb2.DESCRIPTOR.services_by_name["AuthService"]),
    # Refused before any work: the data service it asks (LAUNCHPAD_DATA_ADDR) need not run.
    "ai": (build_ai, ai_pb2.DESCRIPTOR.services_by_name["AiService"]),
}
CASES = [(name, method.name) for name, (_, service) in SERVICES.items() for method in service.methods]
PRIVATE = [
    (name, method.name)
    for name, (_, service) in SERVICES.items()
    for method in service.methods
    if not method_policy(method).public
]


async def _call(channel: grpc.aio.Channel, method, md) -> grpc.aio.AioRpcError:
    request_cls = _message_class(method.input_type)
    call = channel.unary_unary(
        wire_name(method), request_serializer=request_cls.SerializeToString, response_deserializer=lambda b: b
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(request_cls(), metadata=md, timeout=10)
    return err.value


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


@pytest.mark.parametrize(("service", "method_name"), CASES)
async def test_rpc_without_request_id_is_rejected(settings_env: Path, service: str, method_name: str) -> None:
    build, descriptor = SERVICES[service]
    async with running_service(service, build) as (_, channel):
        err = await _call(channel, descriptor.methods_by_name[method_name], md=())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-request-id" in err.details()


@pytest.mark.parametrize(("service", "method_name"), PRIVATE)
async def test_rpc_without_token_is_unauthenticated_unless_public(
    settings_env: Path, service: str, method_name: str
) -> None:
    build, descriptor = SERVICES[service]
    method = descriptor.methods_by_name[method_name]
    async with running_service(service, build) as (_, channel):
        err = await _call(channel, method, md=metadata(None))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
