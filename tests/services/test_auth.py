"""The auth service through gRPC, on a real grpc.aio server (port 0) with the embedded SQLite database.

tests/live/test_auth_pg.py runs every test here again against real PostgreSQL: the scenarios only depend on
the `auth_env` fixture, which that module overrides.
"""

from __future__ import annotations

import asyncio
import stat
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import jwt
import orjson
import pytest
from argon2 import PasswordHasher
from google.protobuf import json_format

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.app import MIGRATIONS, build
from services.auth.ratelimit import CLIENT_FACTOR, USER_FACTOR
from services.auth.store import AuthStore
from services.core.audit import verify_chain
from services.core.config import ConfigError, load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.core.interceptors import DETAILS_KEY
from services.core.server import Runtime, create_server, new_runtime
from services.core.tokens import keys_from_jwks
from tests.services.policy_support import FakeData, fake_data
from tests.support import make_token, metadata, running_service

ADMIN_PASSWORD = "admin-Secret-1"
LOGIN_LIMIT = 5


@dataclass
class Auth:
    """A running auth service and a stub, with helpers that log in and call with a token."""

    runtime: Runtime
    stub: auth_pb2_grpc.AuthServiceStub
    data_dir: Path
    responses: list[Any]
    data: FakeData  # the data service auth applies policy changes in (tests/services/policy_support.py)

    async def call(self, method: str, request: Any, token: str | None = None, **extra: str) -> Any:
        response = await getattr(self.stub, method)(request, metadata=metadata(token, **extra))
        self.responses.append(response)
        return response

    async def login(self, username: str, password: str, **extra: str) -> str:
        request = auth_pb2.LoginRequest(username=username, password=password)
        return (await self.call("Login", request, **extra)).token

    async def admin(self) -> str:
        return await self.login("admin", ADMIN_PASSWORD)

    async def create(
        self, token: str, username: str, roles: tuple[str, ...], tenant: str = "", password: str = ""
    ) -> Any:
        request = auth_pb2.CreateUserRequest(
            username=username, password=password or f"pw-{username}-123", roles=roles, tenant=tenant
        )
        return (await self.call("CreateUser", request, token)).user

    async def user_token(self, username: str, roles: tuple[str, ...], tenant: str = "") -> str:
        """Creates the user as the platform admin and logs in as it."""
        await self.create(await self.admin(), username, roles, tenant)
        return await self.login(username, f"pw-{username}-123")


async def fails(awaitable: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    return caught.value


@pytest.fixture
async def auth_env(settings_env: Path) -> Path:
    """The backend the scenarios run on: embedded SQLite here (tests/live overrides it). Returns the data dir."""
    return settings_env


@pytest.fixture
async def auth(
    auth_env: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Auth]:
    """The login limit is LOGIN_LIMIT, or the test's `parametrize("auth", [limit], indirect=True)`."""
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setenv("LAUNCHPAD_LOGIN_ATTEMPTS_PER_MINUTE", str(getattr(request, "param", LOGIN_LIMIT)))
    async with fake_data(monkeypatch) as data, running_service("auth", build) as (runtime, channel):
        yield Auth(runtime, auth_pb2_grpc.AuthServiceStub(channel), auth_env, [], data)


# ---------------------------------------------------------------------------------------------- login


async def test_login_returns_an_es256_jwt_that_verifies_with_the_jwks(auth: Auth) -> None:
    response = await auth.call("Login", auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD))
    assert response.token_type == "Bearer"
    assert response.expires_in == 3600
    assert response.user.username == "admin" and response.user.tenant == "default"
    assert list(response.user.roles) == ["admin"]

    jwks = json_format.MessageToDict(await auth.call("GetJwks", auth_pb2.GetJwksRequest()))
    header = jwt.get_unverified_header(response.token)
    assert header["alg"] == "ES256"
    key = keys_from_jwks(jwks)[header["kid"]]
    claims = jwt.decode(
        response.token, key, algorithms=["ES256"], audience="launchpad", issuer="launchpad-auth"
    )
    assert (claims["sub"], claims["tenant"], claims["roles"]) == ("admin", "default", ["admin"])
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == claims["iat"]
    assert claims["exp"] == response.expires_at.seconds
    assert len(claims["jti"]) >= 16
    [jwk] = jwks["keys"]
    assert {k: jwk[k] for k in ("kty", "crv", "use", "alg")} == {
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
    }  # fmt: skip


async def test_issued_token_is_accepted_by_protected_rpcs(auth: Auth) -> None:
    me = await auth.call("GetCurrentUser", auth_pb2.GetCurrentUserRequest(), await auth.admin())
    assert me.user.username == "admin" and me.user.created_by == "system"
    await fails(
        auth.call("GetCurrentUser", auth_pb2.GetCurrentUserRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    forged = make_token(sub="admin", tenant="default", roles=("admin",))  # signed by a key auth never had
    await fails(auth.call("ListUsers", auth_pb2.ListUsersRequest(), forged), grpc.StatusCode.UNAUTHENTICATED)


async def _timed_failure(auth: Auth, username: str, password: str, client: str) -> tuple[str, float]:
    started = time.perf_counter()
    error = await fails(
        auth.login(username, password, x_forwarded_for=client), grpc.StatusCode.UNAUTHENTICATED
    )
    return error.details(), time.perf_counter() - started


async def test_unknown_user_and_wrong_password_look_the_same(auth: Auth) -> None:
    wrong = [await _timed_failure(auth, "admin", "not-the-password", f"10.0.0.{i}") for i in range(3)]
    unknown = [await _timed_failure(auth, f"ghost{i}", "not-the-password", f"10.0.1.{i}") for i in range(3)]
    assert {message for message, _ in wrong + unknown} == {"invalid username or password"}
    # Both paths run one argon2 verification: the unknown user is not answered measurably faster.
    wrong_s = statistics.median(t for _, t in wrong)
    unknown_s = statistics.median(t for _, t in unknown)
    assert unknown_s > 0.5 * wrong_s, (unknown_s, wrong_s)


async def test_empty_credentials_are_unauthenticated(auth: Auth) -> None:
    await fails(auth.login("", ""), grpc.StatusCode.UNAUTHENTICATED)
    await fails(auth.login("admin", ""), grpc.StatusCode.UNAUTHENTICATED)


def retry_after(error: grpc.aio.AioRpcError) -> int:
    assert "too many failed login attempts" in error.details()
    return orjson.loads(dict(error.trailing_metadata())[DETAILS_KEY])[0]["retry_after_s"]


async def test_an_attacker_cannot_lock_a_user_out(auth: Auth) -> None:
    """Failures count per (username, address): the attacker's address is refused, the user elsewhere is not."""
    await auth.create(await auth.admin(), "carol", ("viewer",))
    attacker = "203.0.113.7"
    for _ in range(LOGIN_LIMIT):
        await fails(
            auth.login("admin", "wrong-password", x_forwarded_for=attacker), grpc.StatusCode.UNAUTHENTICATED
        )
    for password in ["wrong-password"] * LOGIN_LIMIT + [ADMIN_PASSWORD]:  # 11 attempts and more
        error = await fails(
            auth.login("admin", password, x_forwarded_for=attacker), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert 0 < retry_after(error) <= 60
    assert await auth.login("admin", ADMIN_PASSWORD, x_forwarded_for="198.51.100.2")
    assert await auth.login("admin", ADMIN_PASSWORD)  # the gRPC peer's address, without the edge
    # The pair limit is not the whole address's: another user behind it still logs in.
    assert await auth.login("carol", "pw-carol-123", x_forwarded_for=attacker)


async def test_failed_logins_are_limited_per_client(auth: Auth) -> None:
    spraying = "203.0.113.9"
    for i in range(CLIENT_FACTOR * LOGIN_LIMIT):
        await fails(
            auth.login(f"guess{i}", "wrong-password", x_forwarded_for=spraying),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    error = await fails(
        auth.login("guess-next", "wrong-password", x_forwarded_for=spraying),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert 0 < retry_after(error) <= 60
    assert await auth.login("admin", ADMIN_PASSWORD, x_forwarded_for="198.51.100.1")


@pytest.mark.parametrize("auth", [2], indirect=True)  # a ceiling of 20, so that few argon2 checks reach it
async def test_distributed_guessing_is_slowed_by_the_username_ceiling(auth: Auth) -> None:
    """Past USER_FACTOR x the limit of failures for one user, an address that failed for it gets no further
    try that minute (instead of the limit's 2); an address that has not failed is still checked."""
    ceiling = USER_FACTOR * 2
    bots = [f"10.9.0.{i}" for i in range(ceiling)]
    attempts = [auth.login("admin", "wrong-password", x_forwarded_for=bot) for bot in bots]
    errors = await asyncio.gather(*attempts, return_exceptions=True)
    assert {error.code() for error in errors} == {grpc.StatusCode.UNAUTHENTICATED}
    error = await fails(
        auth.login("admin", ADMIN_PASSWORD, x_forwarded_for=bots[0]), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert 0 < retry_after(error) <= 60
    assert await auth.login("admin", ADMIN_PASSWORD, x_forwarded_for="198.51.100.3")  # has not failed
    await fails(
        auth.login("admin", "wrong-password", x_forwarded_for="10.9.1.1"), grpc.StatusCode.UNAUTHENTICATED
    )
    await fails(
        auth.login("admin", "wrong-password", x_forwarded_for="10.9.1.1"), grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_successful_logins_do_not_count_as_failures(auth: Auth) -> None:
    for _ in range(LOGIN_LIMIT + 2):
        assert await auth.admin()


# ---------------------------------------------------------------------------------------------- users


async def test_created_user_is_listed_and_can_log_in(auth: Auth) -> None:
    admin = await auth.admin()
    created = await auth.create(admin, "alice", ("developer",), tenant="acme")
    assert (created.username, created.tenant, list(created.roles)) == ("alice", "acme", ["developer"])
    assert created.created_by == "admin" and created.created_at.seconds > 0 and not created.disabled
    listed = await auth.call("ListUsers", auth_pb2.ListUsersRequest(), admin)
    assert [(u.username, u.tenant) for u in listed.users] == [("alice", "acme"), ("admin", "default")]
    token = await auth.login("alice", "pw-alice-123")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["sub"], claims["tenant"], claims["roles"]) == ("alice", "acme", ["developer"])


async def test_users_see_only_their_tenant(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "boss", ("admin",), tenant="acme")
    await auth.create(admin, "dev", ("developer",), tenant="acme")
    await auth.create(admin, "other", ("admin",), tenant="globex")
    viewer = await auth.user_token("watcher", ("viewer",), tenant="acme")
    listed = await auth.call("ListUsers", auth_pb2.ListUsersRequest(), viewer)
    assert [u.username for u in listed.users] == ["boss", "dev", "watcher"]
    everyone = await auth.call("ListUsers", auth_pb2.ListUsersRequest(), admin)
    assert {u.tenant for u in everyone.users} == {"default", "acme", "globex"}


async def test_tenant_defaults_to_the_creators(auth: Auth) -> None:
    boss = await auth.user_token("boss", ("admin",), tenant="acme")
    created = await auth.create(boss, "newbie", ("viewer",))
    assert created.tenant == "acme"
    same = await auth.create(boss, "newbie2", ("admin", "developer"), tenant="acme")
    assert list(same.roles) == ["admin", "developer"]


async def test_duplicate_username_is_already_exists_even_across_tenants(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "alice", ("developer",), tenant="acme")
    error = await fails(
        auth.create(admin, "alice", ("viewer",), tenant="acme"), grpc.StatusCode.ALREADY_EXISTS
    )
    assert error.details() == "user 'alice' already exists"
    await fails(auth.create(admin, "alice", ("viewer",), tenant="globex"), grpc.StatusCode.ALREADY_EXISTS)
    await fails(auth.create(admin, "admin", ("viewer",)), grpc.StatusCode.ALREADY_EXISTS)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"username": "A"}, "username"),
        ({"username": "Alice"}, "username"),
        ({"username": "-alice"}, "username"),
        ({"username": "a" * 64}, "username"),
        ({"username": "al ice"}, "username"),
        ({"password": "short"}, "password"),
        ({"password": "x" * 1025}, "password"),
        ({"roles": []}, "roles"),
        ({"roles": ["root"]}, "roles must be a non-empty subset of admin, developer, viewer; unknown: root"),
        ({"tenant": "Acme"}, "tenant"),
        ({"tenant": "1acme"}, "tenant"),
        ({"tenant": "a" * 41}, "tenant"),
        ({"tenant": "pg_catalog"}, "tenant"),
        ({"tenant": "public"}, "tenant"),
    ],
)
async def test_invalid_user_fields_are_invalid_argument_naming_the_field(
    auth: Auth, fields: dict[str, Any], needle: str
) -> None:
    request = {"username": "valid.user-1", "password": "long-enough", "roles": ["viewer"], **fields}
    error = await fails(
        auth.call("CreateUser", auth_pb2.CreateUserRequest(**request), await auth.admin()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert needle in error.details()
    field = orjson.loads(dict(error.trailing_metadata())[DETAILS_KEY])[0]["field"]
    assert field == needle.split(" ")[0]


async def test_viewer_and_developer_cannot_manage_users(auth: Auth) -> None:
    for role in ("viewer", "developer"):
        token = await auth.user_token(f"a-{role}", (role,), tenant="acme")
        request = auth_pb2.CreateUserRequest(username="intruder", password="long-enough", roles=["admin"])
        await fails(auth.call("CreateUser", request, token), grpc.StatusCode.PERMISSION_DENIED)
        update = auth_pb2.UpdateUserRequest(username=f"a-{role}", roles=["admin"])
        await fails(auth.call("UpdateUser", update, token), grpc.StatusCode.PERMISSION_DENIED)
        delete = auth_pb2.DeleteUserRequest(username=f"a-{role}")
        await fails(auth.call("DeleteUser", delete, token), grpc.StatusCode.PERMISSION_DENIED)


async def test_tenant_admin_cannot_create_users_in_another_tenant(auth: Auth) -> None:
    boss = await auth.user_token("boss", ("admin",), tenant="acme")
    error = await fails(
        auth.create(boss, "spy", ("admin",), tenant="globex"), grpc.StatusCode.PERMISSION_DENIED
    )
    assert error.details() == "only the platform admin may create users in another tenant"
    await fails(auth.create(boss, "spy", ("admin",), tenant="default"), grpc.StatusCode.PERMISSION_DENIED)
    everyone = await auth.call("ListUsers", auth_pb2.ListUsersRequest(), await auth.admin())
    assert "spy" not in {u.username for u in everyone.users}


async def test_platform_admin_creates_a_tenant_by_creating_its_first_user(auth: Auth) -> None:
    admin = await auth.admin()
    created = await auth.create(admin, "founder", ("admin",), tenant="initech")
    assert created.tenant == "initech"
    founder = await auth.login("founder", "pw-founder-123")
    mates = await auth.call("ListUsers", auth_pb2.ListUsersRequest(), founder)
    assert [u.username for u in mates.users] == ["founder"]
    # The new tenant exists: its admin can keep adding users there.
    assert (await auth.create(founder, "staff", ("viewer",))).tenant == "initech"


async def test_other_tenants_users_are_not_found(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "outsider", ("developer",), tenant="globex")
    boss = await auth.user_token("boss", ("admin",), tenant="acme")
    for method, request in [
        ("GetUser", auth_pb2.GetUserRequest(username="outsider")),
        ("UpdateUser", auth_pb2.UpdateUserRequest(username="outsider", disabled=True)),
        ("DeleteUser", auth_pb2.DeleteUserRequest(username="outsider")),
        ("GetUser", auth_pb2.GetUserRequest(username="admin")),
    ]:
        error = await fails(auth.call(method, request, boss), grpc.StatusCode.NOT_FOUND)
        assert "not found" in error.details()
    missing = await fails(
        auth.call("GetUser", auth_pb2.GetUserRequest(username="nobody"), boss), grpc.StatusCode.NOT_FOUND
    )
    assert missing.details() == "user 'nobody' not found"
    assert (
        await auth.call("GetUser", auth_pb2.GetUserRequest(username="outsider"), admin)
    ).user.tenant == "globex"
    assert not (await auth.call("GetUser", auth_pb2.GetUserRequest(username="outsider"), admin)).user.disabled


async def test_update_roles_password_and_disabled(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "dana", ("viewer",), tenant="acme")
    updated = await auth.call(
        "UpdateUser", auth_pb2.UpdateUserRequest(username="dana", roles=["developer", "viewer"]), admin
    )
    assert list(updated.user.roles) == ["developer", "viewer"]
    await auth.call(
        "UpdateUser", auth_pb2.UpdateUserRequest(username="dana", password="brand-new-pass"), admin
    )
    await fails(auth.login("dana", "pw-dana-123"), grpc.StatusCode.UNAUTHENTICATED)
    claims = jwt.decode(await auth.login("dana", "brand-new-pass"), options={"verify_signature": False})
    assert claims["roles"] == ["developer", "viewer"]

    disabled = await auth.call(
        "UpdateUser", auth_pb2.UpdateUserRequest(username="dana", disabled=True), admin
    )
    assert disabled.user.disabled and list(disabled.user.roles) == ["developer", "viewer"]
    error = await fails(auth.login("dana", "brand-new-pass"), grpc.StatusCode.UNAUTHENTICATED)
    assert error.details() == "user is disabled"
    # A wrong password for a disabled user says nothing about the account.
    wrong = await fails(auth.login("dana", "guess-guess"), grpc.StatusCode.UNAUTHENTICATED)
    assert wrong.details() == "invalid username or password"
    await auth.call("UpdateUser", auth_pb2.UpdateUserRequest(username="dana", disabled=False), admin)
    assert await auth.login("dana", "brand-new-pass")


async def test_update_validates_its_fields(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "erin", ("viewer",))
    for request, field in [
        (auth_pb2.UpdateUserRequest(username="erin", password="short"), "password"),
        (auth_pb2.UpdateUserRequest(username="erin", roles=["superuser"]), "roles"),
    ]:
        error = await fails(auth.call("UpdateUser", request, admin), grpc.StatusCode.INVALID_ARGUMENT)
        assert field in error.details()
    assert await auth.login("erin", "pw-erin-123")


async def test_delete_user(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "frank", ("developer",), tenant="acme")
    deleted = await auth.call("DeleteUser", auth_pb2.DeleteUserRequest(username="frank"), admin)
    assert deleted.deleted
    await fails(
        auth.call("GetUser", auth_pb2.GetUserRequest(username="frank"), admin), grpc.StatusCode.NOT_FOUND
    )
    await fails(auth.login("frank", "pw-frank-123"), grpc.StatusCode.UNAUTHENTICATED)
    await fails(
        auth.call("DeleteUser", auth_pb2.DeleteUserRequest(username="frank"), admin),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_nobody_deletes_or_disables_themselves(auth: Auth) -> None:
    boss = await auth.user_token("boss", ("admin",), tenant="acme")
    error = await fails(
        auth.call("DeleteUser", auth_pb2.DeleteUserRequest(username="boss"), boss),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.details() == "you cannot delete yourself"
    error = await fails(
        auth.call("UpdateUser", auth_pb2.UpdateUserRequest(username="boss", disabled=True), boss),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.details() == "you cannot disable yourself"


async def test_the_last_platform_admin_stays(auth: Auth) -> None:
    admin = await auth.admin()
    demote = auth_pb2.UpdateUserRequest(username="admin", roles=["developer"])
    error = await fails(auth.call("UpdateUser", demote, admin), grpc.StatusCode.FAILED_PRECONDITION)
    assert "last platform admin" in error.details()
    # A second platform admin, demoted after logging in, still holds an admin token: it cannot remove the last.
    await auth.create(admin, "ops", ("admin",), tenant="default")
    ops = await auth.login("ops", "pw-ops-123")
    await auth.call("UpdateUser", auth_pb2.UpdateUserRequest(username="ops", roles=["viewer"]), admin)
    for request, method in [
        (auth_pb2.DeleteUserRequest(username="admin"), "DeleteUser"),
        (auth_pb2.UpdateUserRequest(username="admin", disabled=True), "UpdateUser"),
    ]:
        await fails(auth.call(method, request, ops), grpc.StatusCode.FAILED_PRECONDITION)
    # With another active platform admin, the first one may go.
    await auth.call("UpdateUser", auth_pb2.UpdateUserRequest(username="ops", roles=["admin"]), admin)
    assert (await auth.call("DeleteUser", auth_pb2.DeleteUserRequest(username="admin"), ops)).deleted


async def test_passwords_and_hashes_never_leave_the_service(auth: Auth) -> None:
    admin = await auth.admin()
    await auth.create(admin, "gina", ("developer",), tenant="acme", password="gina-Secret-pass")
    await auth.call(
        "UpdateUser", auth_pb2.UpdateUserRequest(username="gina", password="gina-Other-pass"), admin
    )
    gina = await auth.login("gina", "gina-Other-pass")
    await fails(auth.login("gina", "gina-Wrong-pass"), grpc.StatusCode.UNAUTHENTICATED)
    await auth.call("GetUser", auth_pb2.GetUserRequest(username="gina"), admin)
    await auth.call("ListUsers", auth_pb2.ListUsersRequest(), admin)
    await auth.call("GetCurrentUser", auth_pb2.GetCurrentUserRequest(), gina)
    seen = "\n".join(json_format.MessageToJson(r) for r in auth.responses)
    secrets = (ADMIN_PASSWORD, "gina-Secret-pass", "gina-Other-pass", "gina-Wrong-pass", "argon2")
    assert not [s for s in secrets if s in seen]
    assert "password" not in seen
    # Nor in the audit log (which records who was targeted) or the service log.
    audit = (auth.runtime.settings.process.audit_path).read_text()
    assert '"target":"gina"' in audit
    log_dir = auth.runtime.settings.process.log_dir
    for text in (audit, *(p.read_text() for p in log_dir.glob("*.log"))):
        assert not [s for s in secrets if s in text]
    assert verify_chain(auth.runtime.settings.process.audit_path).ok


async def test_a_hash_with_old_parameters_is_upgraded_at_login(auth: Auth) -> None:
    await auth.create(await auth.admin(), "otto", ("viewer",), password="otto-Secret-pass")
    db = await open_platform_db(auth.runtime.settings, Registry(), migrations=MIGRATIONS)
    try:
        store = AuthStore(db)
        old = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("otto-Secret-pass")
        user = await store.get_user("otto")
        assert user is not None
        await store.update_user(replace(user, password_hash=old))
        assert await auth.login("otto", "otto-Secret-pass")
        upgraded = await store.get_user("otto")
    finally:
        await db.close()
    assert upgraded is not None and upgraded.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


async def test_roles_are_listed(auth: Auth) -> None:
    roles = await auth.call("ListRoles", auth_pb2.ListRolesRequest(), await auth.admin())
    assert [(r.name, r.can_write) for r in roles.roles] == [
        ("admin", True),
        ("developer", True),
        ("viewer", False),
    ]
    assert all(r.description for r in roles.roles)


# -------------------------------------------------------------------------------------------- policies

OWNERS = {
    "name": "owners-only",
    "rules": [
        {"effect": "allow", "actions": ["read", "update"], "resource": "orders/*",
         "condition": {"record.tenant": "$subject.tenant"}},
        {"effect": "deny", "actions": ["*"], "resource": "orders/*",
         "condition": {"record.owner": {"ne": "$subject.sub"}, "record.amount": {"gt": 100}}},
    ],
}  # fmt: skip


def policy_message(document: dict[str, Any]) -> auth_pb2.Policy:
    return json_format.ParseDict(document, auth_pb2.Policy())


async def test_policy_dry_run_decisions(auth: Auth) -> None:
    dev = await auth.user_token("alice", ("developer",), tenant="acme")
    records = [
        {"tenant": "acme", "owner": "alice", "amount": 500},
        {"tenant": "acme", "owner": "bob", "amount": 50},
        {"tenant": "acme", "owner": "bob", "amount": 150},
        {"tenant": "globex", "owner": "alice", "amount": 1},
        {"tenant": "acme", "owner": "bob", "amount": "lots"},
    ]
    request = auth_pb2.DryRunPolicyRequest(
        policy=policy_message(OWNERS),
        action="read",
        resource="orders/42",
        records=[_struct(r) for r in records],
    )
    response = await auth.call("DryRunPolicy", request, dev)
    got = [(d.index, d.decision, d.rule_index) for d in response.decisions]
    assert got == [(0, "allow", 0), (1, "allow", 0), (2, "deny", 1), (3, "deny", -1), (4, "allow", 0)]
    reasons = [d.reason for d in response.decisions]
    assert reasons[0] == (
        "rule 0 (allow) matched: record.tenant eq $subject.tenant; "
        'rule 1 (deny) not matched: record.owner ne $subject.sub is false (record.owner is "alice")'
    )
    assert reasons[2] == (
        "rule 1 (deny) matched: record.amount gt 100 and record.owner ne $subject.sub; overrides allow from rule 0"
    )
    assert reasons[3].startswith("no rule matched (default deny)")
    assert 'cannot compare string "lots" with number 100' in reasons[4]


async def test_dry_run_with_an_explicit_subject(auth: Auth) -> None:
    viewer = await auth.user_token(
        "val", ("viewer",), tenant="acme"
    )  # viewers may dry-run: it writes nothing
    request = auth_pb2.DryRunPolicyRequest(
        policy=policy_message(OWNERS),
        action="update",
        resource="orders/1",
        records=[_struct({"tenant": "globex", "owner": "zed", "amount": 5})],
        subject=_struct({"sub": "zed", "tenant": "globex", "roles": ["developer"]}),
    )
    [decision] = (await auth.call("DryRunPolicy", request, viewer)).decisions
    assert (decision.decision, decision.rule_index) == ("allow", 0)


async def test_dry_run_rejects_invalid_policies_naming_the_rule(auth: Auth) -> None:
    token = await auth.admin()
    bad = {
        "name": "p",
        "rules": [OWNERS["rules"][0], {"effect": "permit", "actions": ["read"], "resource": "*"}],
    }
    request = auth_pb2.DryRunPolicyRequest(policy=policy_message(bad), action="read", resource="x")
    error = await fails(auth.call("DryRunPolicy", request, token), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details() == "rules[1].effect must be allow or deny"
    cond = {"name": "p", "rules": [{"effect": "allow", "actions": ["read"], "resource": "*",
                                    "condition": {"record.x": {"between": [1, 2]}}}]}  # fmt: skip
    request = auth_pb2.DryRunPolicyRequest(policy=policy_message(cond), action="read", resource="x")
    error = await fails(auth.call("DryRunPolicy", request, token), grpc.StatusCode.INVALID_ARGUMENT)
    assert "rules[0].condition['record.x'] has unknown operator 'between'" in error.details()
    request = auth_pb2.DryRunPolicyRequest(policy=policy_message(OWNERS), resource="x")
    error = await fails(auth.call("DryRunPolicy", request, token), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details() == "action is required"


async def test_policies_are_created_and_listed_per_tenant(auth: Auth) -> None:
    ada = await auth.user_token("ada", ("admin",), tenant="acme")
    created = await auth.call(
        "CreatePolicy", auth_pb2.CreatePolicyRequest(policy=policy_message(OWNERS)), ada
    )
    assert (created.policy.tenant, created.policy.created_by, created.revision) == ("acme", "ada", 1)
    assert json_format.MessageToDict(created.policy.rules[1].condition) == OWNERS["rules"][1]["condition"]

    viewer = await auth.user_token("val", ("viewer",), tenant="acme")
    listed = await auth.call("ListPolicies", auth_pb2.ListPoliciesRequest(), viewer)
    [policy] = listed.policies
    document = json_format.MessageToDict(policy, preserving_proto_field_name=True)
    assert {"name": document["name"], "rules": document["rules"]} == OWNERS
    outsider = await auth.user_token("olga", ("admin",), tenant="globex")
    assert not (await auth.call("ListPolicies", auth_pb2.ListPoliciesRequest(), outsider)).policies
    everyone = await auth.call("ListPolicies", auth_pb2.ListPoliciesRequest(), await auth.admin())
    assert [(p.tenant, p.name) for p in everyone.policies] == [("acme", "owners-only")]

    # Same name in another tenant is fine; twice in one tenant is not.
    await auth.call("CreatePolicy", auth_pb2.CreatePolicyRequest(policy=policy_message(OWNERS)), outsider)
    await fails(
        auth.call("CreatePolicy", auth_pb2.CreatePolicyRequest(policy=policy_message(OWNERS)), ada),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def test_policy_creation_rules(auth: Auth) -> None:
    request = auth_pb2.CreatePolicyRequest(policy=policy_message(OWNERS))
    for role in ("viewer", "developer"):  # only admins write policies (tests/services/test_auth_policies.py)
        token = await auth.user_token(f"{role[:3]}-acme", (role,), tenant="acme")
        await fails(auth.call("CreatePolicy", request, token), grpc.StatusCode.PERMISSION_DENIED)
    ada = await auth.user_token("ada", ("admin",), tenant="acme")
    bad = auth_pb2.CreatePolicyRequest(policy=policy_message({"name": "p", "rules": [{"effect": "allow"}]}))
    error = await fails(auth.call("CreatePolicy", bad, ada), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details().startswith("rules[0].actions must be")
    elsewhere = auth_pb2.CreatePolicyRequest(policy=policy_message({**OWNERS, "tenant": "globex"}))
    await fails(auth.call("CreatePolicy", elsewhere, ada), grpc.StatusCode.PERMISSION_DENIED)
    # The platform admin may place a policy in an existing tenant, not in one that does not exist.
    admin = await auth.admin()
    error = await fails(auth.call("CreatePolicy", elsewhere, admin), grpc.StatusCode.NOT_FOUND)
    assert error.details() == "tenant 'globex' not found"
    assert (await auth.call("CreatePolicy", auth_pb2.CreatePolicyRequest(
        policy=policy_message({**OWNERS, "tenant": "acme"})), admin)).policy.tenant == "acme"  # fmt: skip
    assert [(a.tenant, a.names) for a in auth.data.applied] == [("acme", ("owners-only",))]


def _struct(value: dict[str, Any]) -> Any:
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


# ----------------------------------------------------------------------------------- start-up and keys


async def test_generated_admin_password_is_shown_once(
    auth_env: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LAUNCHPAD_ADMIN_PASSWORD", raising=False)
    async with running_service("auth", build) as (runtime, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        password_file = auth_env / "auth" / "initial-admin-password"
        password = password_file.read_text().strip()
        assert len(password) >= 16
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        response = await stub.Login(
            auth_pb2.LoginRequest(username="admin", password=password), metadata=metadata()
        )
        assert response.user.roles == ["admin"]
        log_text = (runtime.settings.process.log_dir / "auth.log").read_text()
    err = capfd.readouterr().err
    assert f"initial password for user 'admin': {password}" in err
    assert password not in log_text and "initial-admin-password" in log_text
    # A restart finds the admin and announces nothing.
    async with running_service("auth", build):
        pass
    assert password not in capfd.readouterr().err
    assert password_file.read_text().strip() == password


async def test_a_too_short_admin_password_stops_the_start(
    auth_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", "short")
    with pytest.raises(ConfigError, match="LAUNCHPAD_ADMIN_PASSWORD must be 8 to 1024 characters"):
        async with running_service("auth", build):
            pass


async def test_replicas_starting_at_once_agree(auth_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three replicas on one data dir and database: one key, one admin, one announced password."""
    monkeypatch.delenv("LAUNCHPAD_ADMIN_PASSWORD", raising=False)
    runtimes = [new_runtime(load_settings("auth")) for _ in range(3)]
    servers, channels = [], []
    try:
        specs = await asyncio.gather(*(build(runtime) for runtime in runtimes))
        for runtime, spec in zip(runtimes, specs, strict=True):
            server, port = await create_server(runtime, spec, port=0)
            servers.append(server)
            channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        stubs = [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
        jwks = [await stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=metadata()) for stub in stubs]
        assert len(jwks[0].keys) == 1 and all(j == jwks[0] for j in jwks)
        key_file = auth_env / "auth" / "jwt-signing-key.pem"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert not [p for p in key_file.parent.iterdir() if p.name.startswith(".")]  # no temp files left
        password = (auth_env / "auth" / "initial-admin-password").read_text().strip()
        login = auth_pb2.LoginRequest(username="admin", password=password)
        tokens = [(await stub.Login(login, metadata=metadata())).token for stub in stubs]
        # A token from one replica is accepted by the others.
        users = await stubs[2].ListUsers(auth_pb2.ListUsersRequest(), metadata=metadata(tokens[0]))
        assert [u.username for u in users.users] == ["admin"]
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.stop(None)
        for runtime in runtimes:
            await runtime.close()


async def test_jwt_key_path_from_the_environment(
    auth_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path = tmp_path / "secrets" / "jwt.pem"
    monkeypatch.setenv("LAUNCHPAD_JWT_KEY_PATH", str(key_path))
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    async with running_service("auth", build) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        jwks = await stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=metadata())
    assert key_path.exists() and not (auth_env / "auth" / "jwt-signing-key.pem").exists()
    async with running_service("auth", build) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        again = await stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=metadata())
    assert again == jwks  # the same key after a restart


async def test_postgresql_down_without_fallback_is_unavailable(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIMULATION_MODE=false: a dead PostgreSQL makes calls UNAVAILABLE; nothing is written to SQLite."""
    monkeypatch.setenv("POSTGRES_DSN", "postgresql://postgres@127.0.0.1:1/none")
    monkeypatch.setenv("SIMULATION_MODE", "false")
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    async with running_service("auth", build) as (runtime, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        request = auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD)
        for _ in range(12):  # a database outage is not the caller's failed attempt: no RESOURCE_EXHAUSTED
            await fails(stub.Login(request, metadata=metadata()), grpc.StatusCode.UNAVAILABLE)
        assert not runtime.deps.serving()
    assert not (settings_env / "platform.sqlite").exists()
