"""The stack a live dry run needs: the real auth service, the real storage and realtime services (reading the
policies auth stores through the real PolicyBook on the platform database), and a stand-in data service.

The stand-in (FakeTables) answers ApplyPolicies like tests/services/policy_support.py and ProbePolicies the
way data.proto describes the data service's answer (only the rows the subject can read, each with update and
delete; roles first; admins ungoverned), deciding with the shared PolicySet. It records every probe, so a
test sees the set auth sent. Tokens are the auth service's own: storage and realtime verify them with auth's
keys (LateKeys, since auth starts last: it needs their addresses).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from launchpad.data.v1 import data_pb2, data_pb2_grpc
from launchpad.realtime.v1 import realtime_pb2_grpc
from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.auth.app import build as build_auth
from services.core.config import load_settings
from services.core.context import current_principal
from services.core.errors import InvalidArgument
from services.core.interceptors import INTERNAL_CALLER
from services.core.policy import compile_set
from services.core.policy.access import subject_governed, subject_writes
from services.core.server import Runtime, ServiceSpec, create_server, new_runtime
from services.core.structs import dict_to_struct, struct_to_dict
from services.data.servicer import build as build_data
from services.realtime.app import build as build_realtime
from services.storage.servicer import build as build_storage
from tests.services.policy_support import FakeData
from tests.services.test_storage import signature_of
from tests.support import TEST_KEYS, metadata

PASSWORD = "admin-Secret-1"
TENANT = "acme"


@dataclass(frozen=True, slots=True)
class Probe:
    tenant: str
    names: tuple[str, ...]
    documents: tuple[dict[str, Any], ...]
    table: str
    subject: dict[str, Any]
    limit: int


@dataclass
class FakeTables(FakeData):
    """FakeData plus ProbePolicies over in-memory tables: {tenant: {table: [row, ...]}}."""

    tables: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)

    async def ProbePolicies(
        self, request: data_pb2.ProbePoliciesRequest, context: Any
    ) -> data_pb2.ProbePoliciesResponse:
        assert current_principal() is INTERNAL_CALLER
        documents = tuple(struct_to_dict(policy) for policy in request.policies)
        subject = struct_to_dict(request.subject)
        self.probes.append(
            Probe(request.tenant, tuple(d["name"] for d in documents), documents, request.table, subject,
                  request.limit)
        )  # fmt: skip
        rows = self.tables.get(request.tenant, {}).get(request.table)
        if rows is None:
            raise InvalidArgument(f"table {request.table!r} does not exist", field="table")
        policies = compile_set(list(documents))
        governed = subject_governed(subject) and policies.governs(request.table)
        writes = subject_writes(subject)

        def allows(action: str, row: Mapping[str, Any]) -> bool:
            return not governed or policies.allows(action, request.table, row, subject)

        readable = [row for row in rows if allows("read", row)]
        limit = request.limit or 100
        probed = [
            data_pb2.ProbedRow(
                record=dict_to_struct(row),
                read=True,
                update=writes and allows("update", row),
                delete=writes and allows("delete", row),
            )
            for row in readable[:limit]
        ]
        return data_pb2.ProbePoliciesResponse(governed=governed, rows=probed, truncated=len(readable) > limit)


class LateKeys:
    """A KeyProvider whose keys (the auth service's) are set once auth has started."""

    def __init__(self) -> None:
        self.keys: Any = None

    async def key_for(self, kid: str) -> Any | None:
        return None if self.keys is None else await self.keys.key_for(kid)


@dataclass
class Stack:
    auth: auth_pb2_grpc.AuthServiceStub
    storage: storage_pb2_grpc.StorageServiceStub
    realtime: realtime_pb2_grpc.RealtimeServiceStub
    data: FakeTables
    auth_runtime: Runtime
    addresses: dict[str, str]
    sql: data_pb2_grpc.DataServiceStub  # the data service (the real one with real_data)

    async def token(self, username: str, password: str) -> str:
        request = auth_pb2.LoginRequest(username=username, password=password)
        return (await self.auth.Login(request, metadata=metadata())).token

    async def user(self, username: str, role: str, tenant: str = TENANT) -> str:
        """Creates the user (as the platform admin) and returns its token."""
        admin = await self.token("admin", PASSWORD)
        request = auth_pb2.CreateUserRequest(
            username=username, password=f"pw-{username}-123", roles=[role], tenant=tenant
        )
        await self.auth.CreateUser(request, metadata=metadata(admin))
        return await self.token(username, f"pw-{username}-123")

    async def upload(self, token: str, path: str, data: bytes = b"") -> None:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method="PUT")
        url = (await self.storage.CreateSignedUrl(request, metadata=metadata(token))).url

        async def chunks() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
            yield storage_pb2.WriteObjectRequest(signature=signature_of(url), data=data or path.encode())

        await self.storage.WriteObject(chunks(), metadata=metadata())

    async def listed(self, token: str, bucket: str) -> list[str]:
        """Every key `token` is served by ListObjects, following the pages."""
        keys, page_token = [], ""
        while True:
            request = storage_pb2.ListObjectsRequest(bucket=bucket, page_token=page_token)
            page = await self.storage.ListObjects(request, metadata=metadata(token))
            keys += [o.key for o in page.objects]
            if not (page_token := page.next_page_token):
                return keys


@contextlib.asynccontextmanager
async def serve(name: str, build: Any, keys: Any) -> AsyncIterator[tuple[Runtime, str]]:
    runtime = new_runtime(load_settings(name))
    runtime.keys = keys
    try:
        server, port = await create_server(runtime, await build(runtime), port=0)
    except BaseException:
        await runtime.close()
        raise
    try:
        yield runtime, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await runtime.close()


@contextlib.asynccontextmanager
async def serve_fake_data(monkeypatch: pytest.MonkeyPatch, fake: FakeTables) -> AsyncIterator[str]:
    """Serves the stand-in on port 0 and points LAUNCHPAD_DATA_ADDR at it (before auth starts)."""
    descriptor = data_pb2.DESCRIPTOR.services_by_name["DataService"]
    spec = ServiceSpec(descriptor, fake, data_pb2_grpc.add_DataServiceServicer_to_server)

    async def build(runtime: Runtime) -> list[ServiceSpec]:
        return [spec]

    async with serve("data", build, TEST_KEYS) as (_, address):
        monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", address)
        yield address


@contextlib.asynccontextmanager
async def live_stack(monkeypatch: pytest.MonkeyPatch, *, real_data: bool = False) -> AsyncIterator[Stack]:
    """Data (the stand-in, or the real service: `real_data`, for live PostgreSQL), storage and realtime (real,
    embedded objects and broker), then auth pointed at them. Needs settings_env."""
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)  # the embedded folder of buckets
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", PASSWORD)
    keys = LateKeys()
    data = FakeTables()
    async with (
        serve("data", build_data, keys) if real_data else serve_fake_data(monkeypatch, data) as served,
        serve("storage", build_storage, keys) as (_, storage_address),
        serve("realtime", build_realtime, keys) as (_, realtime_address),
    ):
        data_address = served[1] if real_data else served
        monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", data_address)
        monkeypatch.setenv("LAUNCHPAD_STORAGE_ADDR", storage_address)
        async with serve("auth", build_auth, None) as (auth_runtime, auth_address):
            keys.keys = auth_runtime.keys
            addresses = {
                "auth": auth_address, "storage": storage_address, "realtime": realtime_address, "data": data_address,
            }  # fmt: skip
            channels = {name: grpc.aio.insecure_channel(address) for name, address in addresses.items()}
            try:
                yield Stack(
                    auth_pb2_grpc.AuthServiceStub(channels["auth"]),
                    storage_pb2_grpc.StorageServiceStub(channels["storage"]),
                    realtime_pb2_grpc.RealtimeServiceStub(channels["realtime"]),
                    data,
                    auth_runtime,
                    addresses,
                    data_pb2_grpc.DataServiceStub(channels["data"]),
                )
            finally:
                for channel in channels.values():
                    await channel.close()
