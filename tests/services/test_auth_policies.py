"""Policy administration through gRPC: who may change policies, get/replace/delete, the per-tenant revision,
the data service applying every change before it is stored, the audit trail, and the PolicyBook the
enforcing services read.

A real auth service (port 0, embedded SQLite here; tests/live/test_auth_pg.py runs these again on PostgreSQL)
in front of a stand-in data service (tests/services/policy_support.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.auth.app import build
from services.auth.enforcement import DataEnforcer
from services.core.audit import verify_chain
from services.core.config import load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.core.errors import InvalidArgument, Unavailable
from services.core.interceptors import DETAILS_KEY
from services.core.internal import internal_secret
from services.core.policy import book as book_module
from services.core.policy.book import NO_MIGRATIONS, PolicyBook
from services.core.server import ServiceSpec, create_server, new_runtime
from tests.services import test_auth as scenarios
from tests.services.policy_support import FakeData
from tests.services.test_auth import Auth, fails, policy_message
from tests.support import free_address, metadata, running_service

# The fixtures: a real auth service and the stand-in data service, on the backend auth_env selects.
globals().update(auth=scenarios.auth, auth_env=scenarios.auth_env)

OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
NO_BIG = {
    "name": "no-big",
    "rules": [{"effect": "deny", "actions": ["write"], "resource": "orders*",
               "condition": {"record.amount": {"gt": 100}}}],
}  # fmt: skip


def create(policy: dict[str, Any]) -> auth_pb2.CreatePolicyRequest:
    return auth_pb2.CreatePolicyRequest(policy=policy_message(policy))


def put(name: str, policy: dict[str, Any]) -> auth_pb2.ReplacePolicyRequest:
    return auth_pb2.ReplacePolicyRequest(name=name, policy=policy_message(policy))


def get(name: str, tenant: str = "") -> auth_pb2.GetPolicyRequest:
    return auth_pb2.GetPolicyRequest(name=name, tenant=tenant)


def delete(name: str, tenant: str = "") -> auth_pb2.DeletePolicyRequest:
    return auth_pb2.DeletePolicyRequest(name=name, tenant=tenant)


def rules(policy: auth_pb2.Policy) -> list[dict[str, Any]]:
    return json_format.MessageToDict(policy)["rules"]


async def names(auth: Auth, token: str) -> list[str]:
    return [p.name for p in (await auth.call("ListPolicies", auth_pb2.ListPoliciesRequest(), token)).policies]


def sha256_of(document: dict[str, Any]) -> str:
    """What the audit log must carry: the sha256 of the stored text (canonical JSON)."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def ada(auth: Auth) -> str:
    """A tenant admin of acme."""
    return await auth.user_token("ada", ("admin",), tenant="acme")


@pytest.fixture
async def book(auth: Auth) -> AsyncIterator[PolicyBook]:
    """The book an enforcing service reads: its own connection to the platform database auth writes."""
    db = await open_platform_db(load_settings("storage"), Registry(), migrations=NO_MIGRATIONS)
    try:
        yield PolicyBook(db)
    finally:
        await db.close()


# ------------------------------------------------------------------------------------------------ roles


async def test_developers_and_viewers_read_and_dry_run_but_never_change_policies(
    auth: Auth, ada: str
) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    for role in ("developer", "viewer"):
        token = await auth.user_token(f"{role[:3]}-acme", (role,), tenant="acme")
        assert await names(auth, token) == ["own-rows"]
        assert rules((await auth.call("GetPolicy", get("own-rows"), token)).policy) == OWN_ROWS["rules"]
        dry = auth_pb2.DryRunPolicyRequest(policy=policy_message(OWN_ROWS), action="read", resource="notes")
        dry.records.add().update({"owner": f"{role[:3]}-acme"})
        [decision] = (await auth.call("DryRunPolicy", dry, token)).decisions
        assert decision.decision == "allow"
        for method, request in [
            ("CreatePolicy", create(NO_BIG)),
            ("ReplacePolicy", put("own-rows", NO_BIG | {"name": ""})),
            ("DeletePolicy", delete("own-rows")),
        ]:
            error = await fails(auth.call(method, request, token), grpc.StatusCode.PERMISSION_DENIED)
            assert error.details() == f"{method} needs role admin (your roles: {role}); ask a tenant admin"
    # Nothing changed: still one policy, applied once, at revision 1.
    assert await names(auth, ada) == ["own-rows"]
    assert [(a.names, a.revision) for a in auth.data.applied] == [(("own-rows",), 1)]


async def test_tenants_only_see_and_change_their_own_policies(auth: Auth, ada: str) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    olga = await auth.user_token("olga", ("admin",), tenant="globex")
    # Another tenant's policy of that name does not exist for globex; naming acme is refused.
    await fails(auth.call("GetPolicy", get("own-rows"), olga), grpc.StatusCode.NOT_FOUND)
    await fails(auth.call("DeletePolicy", delete("own-rows"), olga), grpc.StatusCode.NOT_FOUND)
    for method, request in [
        ("GetPolicy", get("own-rows", "acme")),
        ("DeletePolicy", delete("own-rows", "acme")),
    ]:
        error = await fails(auth.call(method, request, olga), grpc.StatusCode.PERMISSION_DENIED)
        assert "your own tenant" in error.details()
    elsewhere = auth_pb2.ReplacePolicyRequest(
        name="own-rows", policy=policy_message({**OWN_ROWS, "tenant": "acme"})
    )
    await fails(auth.call("ReplacePolicy", elsewhere, olga), grpc.StatusCode.PERMISSION_DENIED)
    # The platform admin names the tenant.
    admin = await auth.admin()
    assert (await auth.call("GetPolicy", get("own-rows", "acme"), admin)).policy.tenant == "acme"
    await fails(auth.call("GetPolicy", get("own-rows"), admin), grpc.StatusCode.NOT_FOUND)  # its own: default
    replaced = await auth.call("ReplacePolicy", elsewhere, admin)
    assert (replaced.policy.tenant, replaced.policy.updated_by, replaced.revision) == ("acme", "admin", 2)
    assert (await auth.call("DeletePolicy", delete("own-rows", "acme"), admin)).revision == 3
    assert await names(auth, ada) == []
    assert {a.tenant for a in auth.data.applied} == {"acme"}


# ---------------------------------------------------------------------------------- get, replace, delete


async def test_get_a_policy(auth: Auth, ada: str) -> None:
    created = (await auth.call("CreatePolicy", create(OWN_ROWS), ada)).policy
    got = (await auth.call("GetPolicy", get("own-rows"), ada)).policy
    assert got == created
    assert (got.created_by, got.updated_by, got.updated_at) == ("ada", "ada", got.created_at)
    error = await fails(auth.call("GetPolicy", get("nope"), ada), grpc.StatusCode.NOT_FOUND)
    assert error.details() == "policy 'nope' not found in tenant 'acme'"


async def test_replace_creates_then_replaces_whole(auth: Auth, ada: str) -> None:
    first = await auth.call("ReplacePolicy", put("guard", {**OWN_ROWS, "name": ""}), ada)
    assert (first.created, first.revision, first.policy.name) == (True, 1, "guard")  # the path names it
    ben = await auth.user_token("ben", ("admin",), tenant="acme")
    second = await auth.call("ReplacePolicy", put("guard", {**NO_BIG, "name": "guard"}), ben)
    assert (second.created, second.revision) == (False, 2)
    assert rules(second.policy) == NO_BIG["rules"]  # whole: nothing of the old rules is left
    assert (second.policy.created_by, second.policy.updated_by) == ("ada", "ben")
    assert second.policy.created_at == first.policy.created_at
    assert second.policy.updated_at.ToMilliseconds() >= first.policy.updated_at.ToMilliseconds()
    got = (await auth.call("GetPolicy", get("guard"), ada)).policy
    assert got == second.policy
    assert await names(auth, ada) == ["guard"]


async def test_replace_refuses_a_name_that_differs_from_the_path(auth: Auth, ada: str) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    error = await fails(
        auth.call("ReplacePolicy", put("own-rows", NO_BIG), ada), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.details().startswith("the policy's name 'no-big' does not match 'own-rows' in the path")
    assert _details(error) == {"field": "policy.name"}
    assert await names(auth, ada) == ["own-rows"]
    assert rules((await auth.call("GetPolicy", get("own-rows"), ada)).policy) == OWN_ROWS["rules"]


async def test_invalid_policies_are_refused_naming_the_part(auth: Auth, ada: str) -> None:
    bad_effect = {"name": "p", "rules": [OWN_ROWS["rules"][0], {**OWN_ROWS["rules"][0], "effect": "permit"}]}
    bad_operator = {
        "name": "p",
        "rules": [{**OWN_ROWS["rules"][0], "condition": {"record.x": {"between": [1]}}}],
    }
    for method, request in (("CreatePolicy", create(bad_effect)), ("ReplacePolicy", put("p", bad_effect))):
        error = await fails(auth.call(method, request, ada), grpc.StatusCode.INVALID_ARGUMENT)
        assert error.details() == "rules[1].effect must be allow or deny"
    error = await fails(
        auth.call("ReplacePolicy", put("p", bad_operator), ada), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "rules[0].condition['record.x'] has unknown operator 'between'" in error.details()
    error = await fails(
        auth.call("ReplacePolicy", put("bad name!", {"rules": []}), ada), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.details().startswith("policy.name must be 1-128 characters")
    assert await names(auth, ada) == [] and auth.data.applied == []


async def test_delete_a_policy(auth: Auth, ada: str) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    await auth.call("CreatePolicy", create(NO_BIG), ada)
    deleted = await auth.call("DeletePolicy", delete("own-rows"), ada)
    assert (deleted.deleted, deleted.revision) == (True, 3)
    assert await names(auth, ada) == ["no-big"]
    await fails(auth.call("GetPolicy", get("own-rows"), ada), grpc.StatusCode.NOT_FOUND)
    error = await fails(auth.call("DeletePolicy", delete("own-rows"), ada), grpc.StatusCode.NOT_FOUND)
    assert error.details() == "policy 'own-rows' not found in tenant 'acme'"
    assert (await auth.call("DeletePolicy", delete("no-big"), ada)).revision == 4  # a 404 bumped nothing


# ---------------------------------------------------------------------------------------- the revision


async def test_every_change_bumps_the_tenants_revision_and_nothing_else_does(
    auth: Auth, ada: str, book: PolicyBook
) -> None:
    assert (await book.current("acme")).revision == 0
    revisions = [
        (await auth.call("CreatePolicy", create(OWN_ROWS), ada)).revision,
        (await auth.call("ReplacePolicy", put("own-rows", NO_BIG | {"name": ""}), ada)).revision,
        (await auth.call("ReplacePolicy", put("other", OWN_ROWS | {"name": ""}), ada)).revision,
        (await auth.call("DeletePolicy", delete("other"), ada)).revision,
    ]
    assert revisions == [1, 2, 3, 4]
    # Refused changes (409, 404, 400) and reads leave it alone.
    await fails(
        auth.call("CreatePolicy", create({**NO_BIG, "name": "own-rows"}), ada), grpc.StatusCode.ALREADY_EXISTS
    )
    await fails(auth.call("DeletePolicy", delete("other"), ada), grpc.StatusCode.NOT_FOUND)
    await fails(auth.call("ReplacePolicy", put("own-rows", NO_BIG), ada), grpc.StatusCode.INVALID_ARGUMENT)
    await auth.call("GetPolicy", get("own-rows"), ada)
    assert (await book.current("acme")).revision == 4
    # Revisions are per tenant.
    olga = await auth.user_token("olga", ("admin",), tenant="globex")
    assert (await auth.call("CreatePolicy", create(OWN_ROWS), olga)).revision == 1
    assert [(await book.current(t)).revision for t in ("acme", "globex", "initech")] == [4, 1, 0]


async def test_concurrent_changes_of_one_tenant_apply_and_store_in_one_order(auth: Auth, ada: str) -> None:
    """Each change holds the tenant's revision row from the bump to the commit, the apply included: the sets
    the data service applied, in order, are exactly the stored history (no change undoes another's)."""
    count = 8
    policies = [{**OWN_ROWS, "name": f"p{i}"} for i in range(count)]
    responses = await asyncio.gather(*(auth.call("CreatePolicy", create(p), ada) for p in policies))
    assert sorted(r.revision for r in responses) == list(range(1, count + 1))
    applied = [a for a in auth.data.applied if a.tenant == "acme"]
    assert [a.revision for a in applied] == list(range(1, count + 1))  # applied in revision order
    for a in applied:
        assert len(a.names) == a.revision  # each set is the one before plus one policy
    assert set(applied[-1].names) == {p["name"] for p in policies}
    assert len(await names(auth, ada)) == count


# -------------------------------------------------------------------------------- applied before stored


async def test_the_whole_new_set_is_applied_before_each_change(auth: Auth, ada: str) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    await auth.call("CreatePolicy", create(NO_BIG), ada)
    await auth.call("ReplacePolicy", put("own-rows", {**OWN_ROWS, "rules": NO_BIG["rules"]}), ada)
    await auth.call("DeletePolicy", delete("no-big"), ada)
    assert [(a.tenant, a.names, a.revision) for a in auth.data.applied] == [
        ("acme", ("own-rows",), 1),
        ("acme", ("no-big", "own-rows"), 2),
        ("acme", ("no-big", "own-rows"), 3),
        ("acme", ("own-rows",), 4),
    ]
    assert auth.data.applied[0].documents == (OWN_ROWS,)
    assert auth.data.applied[2].documents[1] == {**OWN_ROWS, "rules": NO_BIG["rules"]}


async def test_a_set_the_data_service_refuses_is_a_400_and_nothing_is_stored(
    auth: Auth, ada: str, book: PolicyBook
) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    auth.data.refusal = InvalidArgument(
        "policy 'no-big' rule 0 cannot be compiled for table orders: column amount is text, gt needs a number",
        table="orders",
        column="amount",
    )
    error = await fails(auth.call("CreatePolicy", create(NO_BIG), ada), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details() == (
        "policy 'no-big' rule 0 cannot be compiled for table orders: column amount is text, gt needs a number; "
        "nothing was changed"
    )
    assert _details(error) == {"table": "orders", "column": "amount"}
    replacing = put("own-rows", {**NO_BIG, "name": ""})
    await fails(auth.call("ReplacePolicy", replacing, ada), grpc.StatusCode.INVALID_ARGUMENT)
    await fails(auth.call("DeletePolicy", delete("own-rows"), ada), grpc.StatusCode.INVALID_ARGUMENT)
    # Nothing stored: the one policy, as it was, at revision 1.
    assert await names(auth, ada) == ["own-rows"]
    assert rules((await auth.call("GetPolicy", get("own-rows"), ada)).policy) == OWN_ROWS["rules"]
    current = await book.current("acme")
    assert current.revision == 1 and [p.name for p in current.policies] == ["own-rows"]
    auth.data.refusal = None
    assert (await auth.call("CreatePolicy", create(NO_BIG), ada)).revision == 2


async def test_the_data_service_down_is_unavailable_and_nothing_is_stored(
    auth_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", scenarios.ADMIN_PASSWORD)
    monkeypatch.setenv("LAUNCHPAD_DATA_ADDR", free_address())  # nothing listens there
    async with running_service("auth", build) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = auth_pb2.LoginRequest(username="admin", password=scenarios.ADMIN_PASSWORD)
        token = (await stub.Login(login, metadata=metadata())).token
        for call in (stub.CreatePolicy(create(OWN_ROWS), metadata=metadata(token)),
                     stub.ReplacePolicy(put("own-rows", OWN_ROWS), metadata=metadata(token))):  # fmt: skip
            error = await fails(call, grpc.StatusCode.UNAVAILABLE)
            assert error.details() == (
                "the data service, which enforces policies, is not reachable; nothing was changed "
                "(try again when it is back)"
            )
        listed = await stub.ListPolicies(auth_pb2.ListPoliciesRequest(), metadata=metadata(token))
        assert not listed.policies


async def test_a_change_whose_caller_gives_up_still_ends_consistently(
    auth: Auth, ada: str, book: PolicyBook
) -> None:
    """The client's deadline passes while the data service applies the set: the change still commits, so
    what is enforced is what is stored."""
    auth.data.delay_s = 0.5
    call = auth.stub.CreatePolicy(create(OWN_ROWS), metadata=metadata(ada), timeout=0.1)
    await fails(call, grpc.StatusCode.DEADLINE_EXCEEDED)
    for _ in range(50):
        if (await book.current("acme")).revision:
            break
        await asyncio.sleep(0.05)
    current = await book.current("acme")
    assert (current.revision, [p.name for p in current.policies]) == (1, ["own-rows"])
    assert [(a.names, a.revision) for a in auth.data.applied] == [(("own-rows",), 1)]


# ---------------------------------------------------------------------------------------------- audit


async def test_every_change_is_audited_with_the_policy_and_the_sha256_of_what_is_stored(
    auth: Auth, ada: str
) -> None:
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    replaced = {**OWN_ROWS, "rules": NO_BIG["rules"]}
    await auth.call("ReplacePolicy", put("own-rows", replaced), ada)
    await fails(auth.call("DeletePolicy", delete("ghost"), ada), grpc.StatusCode.NOT_FOUND)
    await auth.call("DeletePolicy", delete("own-rows"), ada)
    changing = {
        f"/launchpad.auth.v1.AuthService/{m}" for m in ("CreatePolicy", "ReplacePolicy", "DeletePolicy")
    }
    events = [e for e in _audit(auth) if e["action"] in changing]
    changes = [(e["action"].rsplit("/", 1)[1], e["outcome"], e["target"]) for e in events]
    assert changes == [
        ("CreatePolicy", "ok", "own-rows"),
        ("ReplacePolicy", "ok", "own-rows"),
        ("DeletePolicy", "error", "ghost"),
        ("DeletePolicy", "ok", "own-rows"),
    ]
    create_event, replace_event, _, delete_event = events
    assert {k: create_event[k] for k in ("actor", "tenant", "policy", "policy_tenant", "revision", "sha256")} == {
        "actor": "ada", "tenant": "acme", "policy": "own-rows", "policy_tenant": "acme", "revision": 1,
        "sha256": sha256_of(OWN_ROWS),
    }  # fmt: skip
    assert (replace_event["sha256"], replace_event["previous_sha256"]) == (
        sha256_of(replaced),
        sha256_of(OWN_ROWS),
    )
    assert (delete_event["sha256"], delete_event["revision"]) == (sha256_of(replaced), 3)  # what was deleted
    assert verify_chain(auth.runtime.settings.process.audit_path).ok


# ----------------------------------------------------------------------------------------- policy book


async def test_the_policy_book_sees_each_change_on_the_very_next_call(
    auth: Auth, ada: str, book: PolicyBook
) -> None:
    empty = await book.current("acme")
    assert (empty.revision, empty.policies, empty.governs("notes")) == (0, (), False)
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    first = await book.current("acme")
    assert (first.revision, first.governs("notes"), first.governs("orders")) == (1, True, False)
    alice, bob = {"sub": "alice"}, {"sub": "bob"}
    assert first.allows("read", "notes", {"owner": "alice"}, alice)
    assert not first.allows("read", "notes", {"owner": "alice"}, bob)
    await auth.call("ReplacePolicy", put("own-rows", {**OWN_ROWS, "rules": NO_BIG["rules"]}), ada)
    second = await book.current("acme")
    assert (second.revision, second.governs("notes"), second.governs("orders_2024")) == (2, False, True)
    await auth.call("DeletePolicy", delete("own-rows"), ada)
    third = await book.current("acme")
    assert (third.revision, third.policies, third.governs("orders")) == (3, (), False)


async def test_the_policy_book_compiles_once_per_revision(
    auth: Auth, ada: str, book: PolicyBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[int] = []
    real = book_module.compile_set

    def counting(documents: Any, revision: int = 0) -> Any:
        compiled.append(revision)
        return real(documents, revision)

    monkeypatch.setattr(book_module, "compile_set", counting)
    await auth.call("CreatePolicy", create(OWN_ROWS), ada)
    sets = [await book.current("acme") for _ in range(5)]
    assert all(s is sets[0] for s in sets) and compiled == [1]
    await auth.call("CreatePolicy", create(NO_BIG), ada)
    assert (await book.current("acme")).revision == 2 and compiled == [1, 2]


# ---------------------------------------------------------------------------------------------- helpers


def _details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY:
            return orjson.loads(value)[0]
    return {}


def _audit(auth: Auth) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in auth.runtime.settings.process.audit_path.read_bytes().splitlines()]


# ------------------------------------------------------------------------- the data service's answers


@contextlib.asynccontextmanager
async def _data_server(servicer: Any) -> AsyncIterator[str]:
    runtime = new_runtime(load_settings("data"))
    spec = ServiceSpec(
        data_pb2.DESCRIPTOR.services_by_name["DataService"],
        servicer,
        data_pb2_grpc.add_DataServiceServicer_to_server,
    )
    server, port = await create_server(runtime, [spec], port=0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await runtime.close()


async def test_a_data_service_without_apply_policies_or_with_another_secret_stores_nothing(
    settings_env: Path,
) -> None:
    """Never store a policy that nothing enforces: an old data service (UNIMPLEMENTED) and a credential
    mismatch are both UNAVAILABLE, with what to do."""
    settings = load_settings("auth")
    old = grpc.aio.server()  # a data service from before ApplyPolicies: the method does not exist there
    port = old.add_insecure_port("127.0.0.1:0")
    await old.start()
    enforcer = DataEnforcer(f"127.0.0.1:{port}", internal_secret(settings))
    try:
        with pytest.raises(
            Unavailable, match="the data service is too old to enforce policies; nothing was changed"
        ):
            await enforcer.apply("acme", [OWN_ROWS], 1)
    finally:
        await enforcer.close()
        await old.stop(None)
    async with _data_server(FakeData()) as address:
        enforcer = DataEnforcer(address, "not-the-secret")
        with pytest.raises(Unavailable, match="set the same LAUNCHPAD_INTERNAL_SECRET for every service"):
            await enforcer.apply("acme", [OWN_ROWS], 1)
        await enforcer.close()
