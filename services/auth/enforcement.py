"""Policy distribution: before auth stores a change, the data service applies the tenant's whole new set.

The data service compiles the set against the tenant's tables and applies it (PostgreSQL: row-level security)
in one transaction, or refuses it with INVALID_ARGUMENT naming the table and column a rule cannot be compiled
for. Auth calls it *before* committing the change (services/auth/policy_admin.py), so a policy is never
stored that nothing enforces: a refusal is the user's 400 and nothing is stored; the data service being down
or too old to enforce policies is UNAVAILABLE and nothing is stored either.

ApplyPolicies is internal (contract option `access.internal`): it takes the internal credential, not a
user token, because it acts for the tenant, not for one user (services/core/internal.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import grpc
import orjson

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core import internal
from services.core.clients import internal_channel
from services.core.context import current_request_id
from services.core.errors import Code, InvalidArgument, ServiceError, Unavailable
from services.core.interceptors import DETAILS_KEY
from services.core.structs import dict_to_struct

log = logging.getLogger("launchpad.auth.policies")
# Below the edge's default deadline (10 s), so a slow data service is this clear UNAVAILABLE, not a timeout.
APPLY_TIMEOUT_S = 8.0
# Status codes that say the data service is not there (down, slow or gone), not that it refused.
DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
NOT_STORED = "nothing was changed"


class Enforcer(Protocol):
    """Where a tenant's policy set is applied before it is stored."""

    async def apply(self, tenant: str, documents: Sequence[Mapping[str, Any]], revision: int) -> None:
        """Applies the tenant's whole set; raises ServiceError (nothing applied) when it cannot."""
        ...


class DataEnforcer:
    """The data service's ApplyPolicies, over one channel created on first use (inside the event loop)."""

    def __init__(self, address: str, secret: str, timeout_s: float = APPLY_TIMEOUT_S) -> None:
        self.address = address
        self._secret = secret
        self._timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: data_pb2_grpc.DataServiceStub | None = None

    def _data(self) -> data_pb2_grpc.DataServiceStub:
        if self._stub is None:
            self._channel = internal_channel(self.address)
            self._stub = data_pb2_grpc.DataServiceStub(self._channel)
        return self._stub

    async def apply(self, tenant: str, documents: Sequence[Mapping[str, Any]], revision: int) -> None:
        request = data_pb2.ApplyPoliciesRequest(
            tenant=tenant, policies=[dict_to_struct(document) for document in documents], revision=revision
        )
        metadata = (
            ("x-request-id", current_request_id() or f"policies-{uuid.uuid4().hex}"),
            (internal.METADATA_KEY, self._secret),
        )
        try:
            await self._data().ApplyPolicies(request, metadata=metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._refusal(tenant, exc) from None

    def _refusal(self, tenant: str, exc: grpc.aio.AioRpcError) -> ServiceError:
        code, message = exc.code(), exc.details() or exc.code().name
        if code == grpc.StatusCode.INVALID_ARGUMENT:  # the set cannot be compiled for a table: the user's 400
            return InvalidArgument(f"{message}; {NOT_STORED}", **error_details(exc))
        log.warning(
            "ApplyPolicies at the data service failed",
            extra={"tenant": tenant, "address": self.address, "code": code.name, "reason": message},
        )
        if code in DOWN:
            return Unavailable(
                "the data service, which enforces policies, is not reachable; "
                f"{NOT_STORED} (try again when it is back)"
            )
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return Unavailable(f"the data service is too old to enforce policies; {NOT_STORED}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            # The processes disagree on LAUNCHPAD_INTERNAL_SECRET: an operator's problem, not the caller's.
            return Unavailable(
                f"the data service refused auth's internal credential; {NOT_STORED} "
                "(set the same LAUNCHPAD_INTERNAL_SECRET for every service)"
            )
        return ServiceError(f"{message}; {NOT_STORED}", code=Code(code.value[0]), **error_details(exc))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


def error_details(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The structured details the data service attached (table, column, field), passed on to the user."""
    for key, value in exc.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                details = orjson.loads(value)
            except orjson.JSONDecodeError:
                return {}
            first = details[0] if isinstance(details, list) and details else {}
            return {str(k): v for k, v in first.items()} if isinstance(first, dict) else {}
    return {}
