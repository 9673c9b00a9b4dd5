"""The service kit's server interceptor: every launchpad RPC passes the same steps, in this order.

1. request id   -- `x-request-id` metadata is required (the edge always sends one).
2. JWT          -- `authorization: Bearer` verified with tokens.py, unless the contract marks the RPC public;
                   internal RPCs take the internal credential instead (services/core/internal.py).
3. tenant       -- the principal's tenant comes from the token; a client `x-tenant-id` is ignored.
4. roles        -- the contract's `access.roles` (and viewers never call `access.write` RPCs).
5. handler      -- runs with a CallContext bound (services.core.context.current_call()).
6. errors       -- ServiceError -> its status; gRPC errors of nested calls keep theirs; anything else ->
                   INTERNAL with the request id, never the exception text.
7. audit, metrics -- one audit event and one counter sample per RPC, written before the response leaves.

Wrapped handlers are built once per method and cached. Health and reflection are not launchpad RPCs and
pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson

from services.core import internal
from services.core.audit import AuditLog
from services.core.context import CallContext, Principal, bind_call, reset_call
from services.core.contracts import MethodPolicy
from services.core.errors import Code, PermissionDenied, ServiceError
from services.core.metrics import AUTH_FAILURES, MethodMetrics
from services.core.tokens import TokenVerifier

log = logging.getLogger("launchpad.kit")
rpc_log = logging.getLogger("launchpad.rpc")
DETAILS_KEY = "launchpad-error-details-bin"
_MAX_REQUEST_ID = 128
INTERNAL_CALLER = Principal(subject="launchpad-internal", tenant="", roles=())


class CallFailed(Exception):
    """A status to send to the client, already audited."""

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes = b"") -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


def _status(code: Code) -> grpc.StatusCode:
    return _STATUS_BY_NUMBER[int(code)]


_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class KitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        service: str,
        policies: dict[str, MethodPolicy],
        verifier: TokenVerifier,
        audit: AuditLog,
        internal_secret: str,
    ) -> None:
        self._service = service
        self._policies = policies
        self._verifier = verifier
        self._audit = audit
        self._internal_secret = internal_secret
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        policy = self._policies.get(details.method)
        if handler is None or policy is None:
            return handler
        wrapped = self._wrapped[details.method] = _wrap(handler, _Steps(self, policy))
        return wrapped

    async def begin(self, policy: MethodPolicy, context: grpc.aio.ServicerContext) -> CallContext:
        """Steps 1-4: the call context, or ServiceError."""
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get("x-request-id", "")
        if not request_id or len(request_id) > _MAX_REQUEST_ID:
            raise ServiceError("x-request-id metadata is required", code=Code.INVALID_ARGUMENT)
        call = CallContext(request_id=request_id, method=policy.full_name)
        if policy.public:
            return call
        if policy.internal:
            internal.verify(metadata.get(internal.METADATA_KEY), self._internal_secret)
            call.principal = INTERNAL_CALLER
            return call
        call.principal = await self._verifier.verify_header(metadata.get("authorization"))
        if not policy.allows(call.principal.roles) or (policy.write and not call.principal.can_write):
            raise PermissionDenied(_refusal(policy, call.principal.roles))
        return call

    def finish(self, call: CallContext | None, policy: MethodPolicy, code: str, started: float) -> None:
        """Step 7: audit (before the response is sent), metrics, and one log line per RPC (what the logs API
        finds by request id)."""
        elapsed = time.perf_counter() - started
        if call is not None:
            rpc_log.info(
                "%s %s %.1f ms",
                policy.full_name,
                code,
                elapsed * 1000,
                extra={
                    "request_id": call.request_id,
                    "tenant": call.tenant,
                    "rpc": policy.full_name,
                    "code": code,
                },
            )
            event = {
                "request_id": call.request_id,
                "service": self._service,
                "action": policy.full_name,
                "actor": call.actor,
                "tenant": call.tenant,
                "outcome": "ok" if code == "OK" else "error",
                "code": code,
                **call.audit,
            }
            self._audit.append(event)
        metrics = _method_metrics(self._service, policy.full_name)
        metrics.observe(code, elapsed)


# Keyed by service too: StatusService and health are served by every service, and in the single topology
# several services share this process.
_METRICS: dict[tuple[str, str], MethodMetrics] = {}


def _method_metrics(service: str, method: str) -> MethodMetrics:
    metrics = _METRICS.get((service, method))
    if metrics is None:
        metrics = _METRICS[service, method] = MethodMetrics(service, method)
    return metrics


class _Steps:
    """Binds the interceptor to one method's policy; runs a call through every step."""

    def __init__(self, kit: KitInterceptor, policy: MethodPolicy) -> None:
        self.kit, self.policy = kit, policy

    async def enter(self, context: grpc.aio.ServicerContext) -> tuple[CallContext, Any]:
        try:
            call = await self.kit.begin(self.policy, context)
        except ServiceError as exc:
            AUTH_FAILURES.labels(self.kit._service, exc.code.name).inc()
            self.kit.finish(
                _refused_call(context, self.policy), self.policy, exc.code.name, time.perf_counter()
            )
            raise _failure(exc) from None
        return call, bind_call(call)

    def fail(self, call: CallContext, exc: BaseException, started: float) -> CallFailed:
        failure = _to_failure(exc, call.request_id)
        self.kit.finish(call, self.policy, failure.code.name, started)
        return failure


def _refused_call(context: grpc.aio.ServicerContext, policy: MethodPolicy) -> CallContext:
    """An audit record for a call refused before it had a principal."""
    metadata = dict(context.invocation_metadata() or ())
    return CallContext(request_id=metadata.get("x-request-id", "")[:_MAX_REQUEST_ID], method=policy.full_name)


def _failure(exc: ServiceError) -> CallFailed:
    details = orjson.dumps([exc.details]) if exc.details else b""
    return CallFailed(_status(exc.code), exc.message, details)


def _to_failure(exc: BaseException, request_id: str) -> CallFailed:
    if isinstance(exc, CallFailed):
        return exc
    if isinstance(exc, ServiceError):
        return _failure(exc)
    if isinstance(exc, grpc.aio.AioRpcError):  # a nested call failed: keep its status and message
        return CallFailed(exc.code(), exc.details() or exc.code().name)
    log.exception("unhandled error in handler", extra={"request_id": request_id})
    return CallFailed(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")


def _ended_code(context: grpc.aio.ServicerContext) -> str:
    """The status of a call the handler aborted itself, or CANCELLED when the client went away."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "CANCELLED"


async def _abort(context: grpc.aio.ServicerContext, failure: CallFailed) -> None:
    trailing = ((DETAILS_KEY, failure.details),) if failure.details else ()
    await context.abort(failure.code, failure.message, trailing_metadata=trailing)


def _wrap(handler: grpc.RpcMethodHandler, steps: _Steps) -> grpc.RpcMethodHandler:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, steps), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, steps), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, steps), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, steps), handler.request_deserializer, handler.response_serializer
    )


def _unary(behavior: Callable[..., Awaitable[Any]], steps: _Steps) -> Callable[..., Awaitable[Any]]:
    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            call, token = await steps.enter(context)
        except CallFailed as failure:
            return await _abort(context, failure)
        try:
            response = await behavior(request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            steps.kit.finish(call, steps.policy, _ended_code(context), started)
            raise
        except Exception as exc:
            return await _abort(context, steps.fail(call, exc, started))
        finally:
            reset_call(token)
        steps.kit.finish(call, steps.policy, "OK", started)
        return response

    return run


def _streaming(
    behavior: Callable[..., AsyncIterator[Any]], steps: _Steps
) -> Callable[..., AsyncIterator[Any]]:
    async def run(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            call, _ = await steps.enter(context)  # the RPC owns its task: the binding dies with it
        except CallFailed as failure:
            await _abort(context, failure)
            return
        try:
            async for response in behavior(request, context):
                yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            steps.kit.finish(call, steps.policy, _ended_code(context), started)
            raise
        except Exception as exc:
            await _abort(context, steps.fail(call, exc, started))
            return
        steps.kit.finish(call, steps.policy, "OK", started)

    return run


def _refusal(policy: MethodPolicy, roles: tuple[str, ...]) -> str:
    """Why the caller's roles may not make this call, in the contract's names."""
    rpc = policy.full_name.rsplit("/", 1)[-1]
    yours = ", ".join(roles) or "none"
    if not policy.allows(roles):
        return (
            f"{rpc} needs role {' or '.join(sorted(policy.roles))} (your roles: {yours}); ask a tenant admin"
        )
    return f"{rpc} writes, and role(s) {yours} may only read"
