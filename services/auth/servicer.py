"""AuthService over gRPC: proto <-> domain conversion only; the rules live in the domain modules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.live import LiveDryRun, LiveRequest, LiveResult
from services.auth.login import Authenticator
from services.auth.policy_admin import Change, PolicyAdmin
from services.auth.store import PolicyRecord, UserRecord
from services.auth.users import NewUser, UserChange, Users
from services.core.context import ROLES, WRITE_ROLES, current_call, current_principal
from services.core.errors import InvalidArgument
from services.core.policy import Decision
from services.core.structs import dict_to_struct, struct_to_dict

Context = grpc.aio.ServicerContext


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self, authenticator: Authenticator, users: Users, policies: PolicyAdmin, jwks: dict, live: LiveDryRun
    ) -> None:
        self._auth = authenticator
        self._users = users
        self._policies = policies
        self._live = live
        self._jwks = auth_pb2.GetJwksResponse(keys=[auth_pb2.Jwk(**key) for key in jwks["keys"]])

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        _target(request.username)
        result = await self._auth.login(request.username, request.password, client_of(context))
        return auth_pb2.LoginResponse(
            token=result.token.token,
            token_type="Bearer",
            expires_at=_timestamp(result.token.expires_at * 1000),
            expires_in=result.token.expires_at - result.token.issued_at,
            user=user_message(result.user),
        )

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Context) -> auth_pb2.GetJwksResponse:
        return self._jwks

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Context
    ) -> auth_pb2.GetCurrentUserResponse:
        return auth_pb2.GetCurrentUserResponse(user=user_message(await self._users.me(current_principal())))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Context
    ) -> auth_pb2.ListUsersResponse:
        users = await self._users.list(current_principal())
        return auth_pb2.ListUsersResponse(users=[user_message(user) for user in users])

    async def CreateUser(
        self, request: auth_pb2.CreateUserRequest, context: Context
    ) -> auth_pb2.CreateUserResponse:
        _target(request.username)
        new = NewUser(request.username, request.password, tuple(request.roles), request.tenant)
        user = await self._users.create(current_principal(), new)
        return auth_pb2.CreateUserResponse(user=user_message(user))

    async def GetUser(self, request: auth_pb2.GetUserRequest, context: Context) -> auth_pb2.GetUserResponse:
        _target(request.username)
        return auth_pb2.GetUserResponse(
            user=user_message(await self._users.get(current_principal(), request.username))
        )

    async def UpdateUser(
        self, request: auth_pb2.UpdateUserRequest, context: Context
    ) -> auth_pb2.UpdateUserResponse:
        _target(request.username)
        change = UserChange(
            password=request.password if request.HasField("password") else None,
            roles=tuple(request.roles),
            disabled=request.disabled if request.HasField("disabled") else None,
        )
        user = await self._users.update(current_principal(), request.username, change)
        return auth_pb2.UpdateUserResponse(user=user_message(user))

    async def DeleteUser(
        self, request: auth_pb2.DeleteUserRequest, context: Context
    ) -> auth_pb2.DeleteUserResponse:
        _target(request.username)
        await self._users.delete(current_principal(), request.username)
        return auth_pb2.DeleteUserResponse(deleted=True)

    async def ListRoles(
        self, request: auth_pb2.ListRolesRequest, context: Context
    ) -> auth_pb2.ListRolesResponse:
        roles = [
            auth_pb2.Role(name=name, description=text, can_write=name in WRITE_ROLES)
            for name, text in ROLES.items()
        ]
        return auth_pb2.ListRolesResponse(roles=roles)

    async def ListPolicies(
        self, request: auth_pb2.ListPoliciesRequest, context: Context
    ) -> auth_pb2.ListPoliciesResponse:
        policies = await self._policies.list(current_principal())
        return auth_pb2.ListPoliciesResponse(policies=[policy_message(p) for p in policies])

    async def CreatePolicy(
        self, request: auth_pb2.CreatePolicyRequest, context: Context
    ) -> auth_pb2.CreatePolicyResponse:
        _target(request.policy.name)
        change = await self._policies.create(
            current_principal(), policy_document(request.policy), request.policy.tenant
        )
        _audit_change(change)
        return auth_pb2.CreatePolicyResponse(policy=policy_message(change.policy), revision=change.revision)

    async def GetPolicy(
        self, request: auth_pb2.GetPolicyRequest, context: Context
    ) -> auth_pb2.GetPolicyResponse:
        _target(request.name)
        record = await self._policies.get(current_principal(), request.name, request.tenant)
        return auth_pb2.GetPolicyResponse(policy=policy_message(record))

    async def ReplacePolicy(
        self, request: auth_pb2.ReplacePolicyRequest, context: Context
    ) -> auth_pb2.ReplacePolicyResponse:
        _target(request.name)
        change = await self._policies.replace(
            current_principal(), request.name, policy_document(request.policy), request.policy.tenant
        )
        _audit_change(change)
        return auth_pb2.ReplacePolicyResponse(
            policy=policy_message(change.policy), created=change.created, revision=change.revision
        )

    async def DeletePolicy(
        self, request: auth_pb2.DeletePolicyRequest, context: Context
    ) -> auth_pb2.DeletePolicyResponse:
        _target(request.name)
        change = await self._policies.delete(current_principal(), request.name, request.tenant)
        _audit_change(change)
        return auth_pb2.DeletePolicyResponse(deleted=True, revision=change.revision)

    async def DryRunPolicy(
        self, request: auth_pb2.DryRunPolicyRequest, context: Context
    ) -> auth_pb2.DryRunPolicyResponse:
        if request.HasField("live"):
            result = await self._live.run(current_principal(), live_request(request))
            return auth_pb2.DryRunPolicyResponse(live=live_message(result))
        decisions = await self._policies.dry_run(
            current_principal(),
            policy_document(request.policy),
            [struct_to_dict(record) for record in request.records],
            request.action,
            request.resource,
            struct_to_dict(request.subject) if request.HasField("subject") else None,
        )
        return auth_pb2.DryRunPolicyResponse(decisions=list(decision_messages(decisions)))


# ------------------------------------------------------------------------------------------- conversions


def _target(name: str) -> None:
    """The audit log records whom or what an RPC was about."""
    current_call().audit["target"] = name[:128]


def _audit_change(change: Change) -> None:
    """A policy change's audit event names the policy, its tenant, the sha256 of the stored document (of the
    deleted one, for a delete) and the tenant's new revision."""
    audit = current_call().audit
    audit.update(
        policy=change.policy.name,
        policy_tenant=change.policy.tenant,
        sha256=change.policy.sha256,
        revision=change.revision,
    )
    if change.previous is not None and change.previous is not change.policy:
        audit["previous_sha256"] = change.previous.sha256


def client_of(context: Context) -> str:
    """The client's address: the edge's x-forwarded-for (it replaces any client value), else the peer."""
    forwarded = dict(context.invocation_metadata() or ()).get("x-forwarded-for", "")
    if forwarded:
        return forwarded.split(",")[0].strip()[:64]
    peer = context.peer() or "unknown"
    host = peer.split(":", 1)[
        -1
    ]  # "ipv4:127.0.0.1:5000" -> "127.0.0.1:5000"; "ipv6:[::1]:5000" -> "[::1]:5000"
    return host.rsplit(":", 1)[0] if ":" in host else host


def _timestamp(ms: int) -> timestamp_pb2.Timestamp | None:
    if ms <= 0:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def user_message(user: UserRecord) -> auth_pb2.User:
    """A user as clients see it: never the password hash."""
    return auth_pb2.User(
        username=user.username,
        roles=list(user.roles),
        tenant=user.tenant,
        disabled=user.disabled,
        created_at=_timestamp(user.created_at),
        updated_at=_timestamp(user.updated_at),
        created_by=user.created_by,
    )


def policy_document(policy: auth_pb2.Policy) -> dict[str, Any]:
    """The policy JSON the engine validates: {name, rules: [{effect, actions, resource, condition?}]}."""
    rules = []
    for rule in policy.rules:
        item: dict[str, Any] = {
            "effect": rule.effect,
            "actions": list(rule.actions),
            "resource": rule.resource,
        }
        if rule.HasField("condition"):
            item["condition"] = struct_to_dict(rule.condition)
        rules.append(item)
    return {"name": policy.name, "rules": rules}


def policy_message(record: PolicyRecord) -> auth_pb2.Policy:
    rules = []
    for rule in record.document.get("rules", []):
        message = auth_pb2.Rule(effect=rule["effect"], actions=rule["actions"], resource=rule["resource"])
        if "condition" in rule:
            message.condition.update(rule["condition"])
        rules.append(message)
    return auth_pb2.Policy(
        name=record.name,
        rules=rules,
        tenant=record.tenant,
        created_at=_timestamp(record.created_at),
        created_by=record.created_by,
        updated_at=_timestamp(record.updated_at or record.created_at),
        updated_by=record.updated_by or record.created_by,
    )


def decision_messages(decisions: Iterable[Decision]) -> Iterable[auth_pb2.Decision]:
    for index, d in enumerate(decisions):
        yield auth_pb2.Decision(index=index, decision=d.decision, rule_index=d.rule_index, reason=d.reason)


def live_request(request: auth_pb2.DryRunPolicyRequest) -> LiveRequest:
    """A live dry run decides every action of its target on real data: no records, action or resource."""
    given = [name for name in ("records", "action", "resource") if getattr(request, name)]
    if given:
        raise InvalidArgument(
            f"a live dry run decides every action of its target on real data: leave {', '.join(given)} out "
            "(or leave live out for a dry run on sample records)",
            field=given[0],
        )
    live = request.live
    kind = live.WhichOneof("target") or ""
    return LiveRequest(
        kind=kind,
        name=getattr(live, kind) if kind else "",
        limit=live.limit,
        tenant=live.tenant,
        candidate=policy_document(request.policy) if request.HasField("policy") else None,
        policy_tenant=request.policy.tenant,
        subject=struct_to_dict(request.subject) if request.HasField("subject") else None,
    )


def live_message(result: LiveResult) -> auth_pb2.LiveResult:
    entries = [
        auth_pb2.LiveEntry(
            record=dict_to_struct(e.record), read=e.read, update=e.update, delete=e.delete, write=e.write
        )
        for e in result.entries
    ]
    return auth_pb2.LiveResult(
        resource=result.resource, governed=result.governed, entries=entries, truncated=result.truncated
    )
