"""A stand-in for the data service's ApplyPolicies, for the tests of policy administration (auth, edge).

It runs behind the real service kit (so auth's internal credential is really verified) and records every set
it is asked to apply; `refusal` makes it refuse the way the real one refuses a policy it cannot compile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.auth.servicer import struct_to_dict
from services.core.config import load_settings
from services.core.context import current_principal
from services.core.errors import ServiceError
from services.core.interceptors import INTERNAL_CALLER
from services.core.server import ServiceSpec, create_server, new_runtime
from tests.support import TEST_KEYS


@dataclass(frozen=True, slots=True)
class Applied:
    tenant: str
    names: tuple[str, ...]  # the policies of the set, in the order sent
    documents: tuple[dict[str, Any], ...]
    revision: int


@dataclass
class FakeData(data_pb2_grpc.DataServiceServicer):
    applied: list[Applied] = field(default_factory=list)
    refusal: ServiceError | None = None
    delay_s: float = 0.0  # a slow apply (many tables)

    async def ApplyPolicies(
        self, request: data_pb2.ApplyPoliciesRequest, context: Any
    ) -> data_pb2.ApplyPoliciesResponse:
        assert current_principal() is INTERNAL_CALLER  # the kit took auth's internal credential
        if self.refusal is not None:
            raise self.refusal
        await asyncio.sleep(self.delay_s)
        documents = tuple(struct_to_dict(policy) for policy in request.policies)
        names = tuple(document["name"] for document in documents)
        self.applied.append(Applied(request.tenant, names, documents, request.revision))
        return data_pb2.ApplyPoliciesResponse()

    def last(self, tenant: str) -> Applied | None:
        return next((a for a in reversed(self.applied) if a.tenant == tenant), None)


@contextlib.asynccontextmanager
async def fake_data(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeData]:
    """Serves FakeData on port 0 and points LAUNCHPAD_DATA_ADDR at it (set it before auth starts)."""
    runtime = new_runtime(load_settings("data"))
    runtime.keys = TEST_KEYS
    fake = FakeData()
    descriptor = data_pb2.DESCRIPTOR.services_by_name["DataService"]
    spec = ServiceSpec(descriptor, fake, data_pb2_grpc.add_DataServiceServicer_to_server)
    server, port = await create_server(runtime, [spec], port=0)
    monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", f"127.0.0.1:{port}")
    try:
        yield fake
    finally:
        await server.stop(None)
        await runtime.close()
