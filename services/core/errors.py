"""One typed error for domain code: it carries a status code, never a grpc import.

The service kit maps ServiceError to a gRPC status; the edge maps gRPC statuses to HTTP (see edge/errors.py).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Code(IntEnum):
    """gRPC status codes (same numbers as grpc.StatusCode), usable without importing grpc."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServiceError(Exception):
    """An error a client should see: a status code, a clear message and optional structured details."""

    code: Code = Code.UNKNOWN

    def __init_subclass__(cls, *, code: Code | None = None, **kwargs: Any) -> None:
        """`class NotFound(ServiceError, code=Code.NOT_FOUND)`: a subclass names its code once."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, code: Code | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class InvalidArgument(ServiceError, code=Code.INVALID_ARGUMENT): ...


class NotFound(ServiceError, code=Code.NOT_FOUND): ...


class AlreadyExists(ServiceError, code=Code.ALREADY_EXISTS): ...


class PermissionDenied(ServiceError, code=Code.PERMISSION_DENIED): ...


class Unauthenticated(ServiceError, code=Code.UNAUTHENTICATED): ...


class FailedPrecondition(ServiceError, code=Code.FAILED_PRECONDITION): ...


class ResourceExhausted(ServiceError, code=Code.RESOURCE_EXHAUSTED): ...


class Aborted(ServiceError, code=Code.ABORTED):
    """Concurrency conflict (deadlock, serialization failure): nothing was applied, retrying is safe."""


class DeadlineExceeded(ServiceError, code=Code.DEADLINE_EXCEEDED): ...


class Unavailable(ServiceError, code=Code.UNAVAILABLE): ...
