"""The live dry run's probes: the enforcing services decide real rows and objects for a subject.

The data service (tables) and the storage service (objects) each answer an internal `ProbePolicies`: given a
tenant, a policy set (the stored one, or the stored one with a candidate), a subject and a limit, they look
at the resource's real rows or objects and decide each with the very code that enforces policies there; the
data service does it inside a transaction it rolls back. Nothing is written and nothing is stored.

Like ApplyPolicies (services/auth/enforcement.py) these RPCs are internal: they act for a subject auth has
already authorized, so they take the internal credential, not a user token, and the edge never routes them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import grpc

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.auth.enforcement import DOWN, error_details
from services.core import internal
from services.core.clients import internal_channel
from services.core.context import current_request_id
from services.core.errors import Code, InvalidArgument, ServiceError, Unavailable
from services.core.structs import dict_to_struct as struct
from services.core.structs import struct_to_dict as plain

log = logging.getLogger("launchpad.auth.policies")
T = TypeVar("T")
PROBE_TIMEOUT_S = 8.0  # below the edge's default deadline (10 s): a slow service is a clear UNAVAILABLE
# What the probes call their request fields, as the dry run's caller knows them.
_FIELDS = {"table": "live.table", "bucket": "live.bucket", "limit": "live.limit"}
Documents = Sequence[Mapping[str, Any]]  # a policy set, as stored
Subject = Mapping[str, Any]  # the claims a real call of the subject carries


@dataclass(frozen=True, slots=True)
class Entry:
    """One row or object and what the subject may do with it (tables: update/delete; the rest: write)."""

    record: dict[str, Any]
    read: bool
    update: bool = False
    delete: bool = False
    write: bool = False


@dataclass(frozen=True, slots=True)
class Probed:
    governed: bool
    entries: list[Entry] = field(default_factory=list)
    truncated: bool = False


class Prober(Protocol):
    """Where live dry runs are decided: the data service for tables, the storage service for buckets."""

    async def table(
        self, tenant: str, documents: Documents, table: str, subject: Subject, limit: int
    ) -> Probed: ...
    async def bucket(
        self, tenant: str, documents: Documents, bucket: str, subject: Subject, limit: int
    ) -> Probed: ...


class ServiceProber:
    """The data and storage services' ProbePolicies, over channels created on first use (in the loop)."""

    def __init__(
        self, data_address: str, storage_address: str, secret: str, timeout_s: float = PROBE_TIMEOUT_S
    ) -> None:
        self._addresses = {"data": data_address, "storage": storage_address}
        self._secret = secret
        self._timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, service: str) -> grpc.aio.Channel:
        if service not in self._channels:
            self._channels[service] = internal_channel(self._addresses[service])
        return self._channels[service]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (
            ("x-request-id", current_request_id() or f"probe-{uuid.uuid4().hex}"),
            (internal.METADATA_KEY, self._secret),
        )

    async def table(
        self, tenant: str, documents: Documents, table: str, subject: Subject, limit: int
    ) -> Probed:
        request = data_pb2.ProbePoliciesRequest(table=table, **_probing(tenant, documents, subject, limit))
        stub = data_pb2_grpc.DataServiceStub(self._channel("data"))
        response = await self._probe("data", tenant, stub.ProbePolicies, request)
        entries = [
            Entry(plain(row.record), row.read, update=row.update, delete=row.delete) for row in response.rows
        ]
        return Probed(response.governed, entries, response.truncated)

    async def bucket(
        self, tenant: str, documents: Documents, bucket: str, subject: Subject, limit: int
    ) -> Probed:
        request = storage_pb2.ProbePoliciesRequest(
            bucket=bucket, **_probing(tenant, documents, subject, limit)
        )
        stub = storage_pb2_grpc.StorageServiceStub(self._channel("storage"))
        response = await self._probe("storage", tenant, stub.ProbePolicies, request)
        entries = [Entry(plain(o.record), o.read, write=o.write) for o in response.objects]
        return Probed(response.governed, entries, response.truncated)

    async def _probe(self, service: str, tenant: str, call: Callable[..., Awaitable[T]], request: Any) -> T:
        """One ProbePolicies call with auth's credential; a failure becomes what the caller sees (_refusal)."""
        try:
            return await call(request, metadata=self._metadata(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._refusal(service, tenant, exc) from None

    def _refusal(self, service: str, tenant: str, exc: grpc.aio.AioRpcError) -> ServiceError:
        """The caller's 400 (an unknown table or bucket, a rule the table cannot compile) passes through,
        with its details; a service that is down, too old or refusing auth's credential is UNAVAILABLE."""
        code, message = exc.code(), exc.details() or exc.code().name
        details = error_details(exc)
        if "field" in details:
            details["field"] = _FIELDS.get(str(details["field"]), details["field"])
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(message, **details)
        log.warning(
            "ProbePolicies failed",
            extra={"service": service, "tenant": tenant, "address": self._addresses[service],
                   "code": code.name, "reason": message},
        )  # fmt: skip
        if code in DOWN:
            return Unavailable(f"the {service} service is not reachable; try the live dry run again later")
        if code == grpc.StatusCode.UNIMPLEMENTED:  # too old, or a backend without a probe
            return ServiceError(
                f"the {service} service cannot run live dry runs: {message}", code=Code.UNIMPLEMENTED
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return Unavailable(
                f"the {service} service refused auth's internal credential "
                "(set the same LAUNCHPAD_INTERNAL_SECRET for every service)"
            )
        return ServiceError(message, code=Code(code.value[0]), **details)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


def _probing(tenant: str, documents: Documents, subject: Subject, limit: int) -> dict[str, Any]:
    """The fields both services' ProbePoliciesRequest share."""
    return {
        "tenant": tenant,
        "policies": [struct(d) for d in documents],
        "subject": struct(subject),
        "limit": limit,
    }
