"""StorageService.ProbePolicies (internal, auth's live dry run) on a real grpc.aio server: every object of a
bucket decided with the request's policy set by the Gate storage enforces with, and nothing written.

The fixtures are test_storage_policies.py's (two developers, a viewer and an admin of acme, a stand-in policy
book). The probe's policies come in the request, never from the book: a candidate set is decided as if
stored while the book keeps enforcing what is stored.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from launchpad.storage.v1 import storage_pb2
from services.core import internal
from services.core.internal import internal_secret
from services.core.structs import dict_to_struct, struct_to_dict
from services.storage.servicer import MAX_PROBE_LIMIT
from tests.services.test_storage_policies import (
    ALLOW_ALL,
    NO_SECRETS,
    OWN_OBJECTS,
    READ_ALL,
    Tenant,
    seeded,
)
from tests.services.test_storage_policies import acme as acme  # the fixture
from tests.support import metadata

DEV1 = {"sub": "dev1", "tenant": "acme", "roles": ["developer"]}


def probe_request(
    *documents: dict[str, Any], bucket: str = "photos", subject: dict[str, Any] = DEV1, limit: int = 0,
    tenant: str = "acme",
) -> storage_pb2.ProbePoliciesRequest:  # fmt: skip
    return storage_pb2.ProbePoliciesRequest(
        tenant=tenant, policies=[dict_to_struct(d) for d in documents], bucket=bucket,
        subject=dict_to_struct(subject), limit=limit,
    )  # fmt: skip


async def probe(acme: Tenant, request: storage_pb2.ProbePoliciesRequest) -> storage_pb2.ProbePoliciesResponse:
    secret = internal_secret(acme.runtime.settings)
    return await acme.admin.stub.ProbePolicies(
        request, metadata=(*metadata(), (internal.METADATA_KEY, secret))
    )


def flags(response: storage_pb2.ProbePoliciesResponse) -> list[tuple[str, bool, bool]]:
    return [(struct_to_dict(o.record)["key"], o.read, o.write) for o in response.objects]


async def test_it_decides_like_the_calls_it_probes_with_the_set_it_is_given(acme: Tenant) -> None:
    await seeded(acme)  # own-objects stored: dev1 owns a c e, dev2 owns b d
    stored = await probe(acme, probe_request(OWN_OBJECTS))
    assert flags(stored) == [("a", True, True), ("b", False, False), ("c", True, True), ("d", False, False),
                             ("e", True, True)]  # fmt: skip
    assert [key for key, read, _ in flags(stored) if read] == await acme.dev1.keys("photos")
    assert struct_to_dict(stored.objects[0].record) == {
        "bucket": "photos", "key": "a", "size": 8, "content_type": "application/octet-stream", "owner": "dev1",
    }  # fmt: skip
    # A candidate set: decided as given, while storage keeps enforcing the stored one.
    candidate = await probe(acme, probe_request(READ_ALL))
    assert flags(candidate) == [(key, True, False) for key in "abcde"]
    assert await acme.dev1.keys("photos") == ["a", "c", "e"]
    # Deny wins across policies of the set.
    no_a = {"name": "no-a", "rules": [{"effect": "deny", "actions": ["*"], "resource": "storage:photos/a"}]}
    assert flags(await probe(acme, probe_request(ALLOW_ALL, no_a)))[0] == ("a", False, False)


async def test_roles_come_first_and_admins_and_ungoverned_storage_see_everything(acme: Tenant) -> None:
    await seeded(acme)
    viewer = {"sub": "viewer", "tenant": "acme", "roles": ["viewer"]}
    as_viewer = await probe(acme, probe_request(ALLOW_ALL, subject=viewer))
    assert (as_viewer.governed, flags(as_viewer)) == (True, [(key, True, False) for key in "abcde"])
    boss = {"sub": "boss", "tenant": "acme", "roles": ["admin"]}
    as_admin = await probe(acme, probe_request(OWN_OBJECTS, subject=boss))
    assert (as_admin.governed, flags(as_admin)) == (False, [(key, True, True) for key in "abcde"])
    table_only = {"name": "t", "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes"}]}
    ungoverned = await probe(acme, probe_request(table_only))
    assert (ungoverned.governed, flags(ungoverned)) == (False, [(key, True, True) for key in "abcde"])


async def test_it_writes_nothing_and_honours_the_limit(acme: Tenant) -> None:
    await seeded(acme)
    before = await acme.admin.keys("photos")
    first = await probe(acme, probe_request(NO_SECRETS, limit=2))
    assert ([key for key, *_ in flags(first)], first.truncated) == (["a", "b"], True)
    whole = await probe(acme, probe_request(NO_SECRETS, limit=5))
    assert (len(whole.objects), whole.truncated) == (5, False)
    assert await acme.admin.keys("photos") == before
    assert await acme.dev2.download("photos/b") == b"photos/b"


async def test_it_is_internal_and_refuses_bad_input(acme: Tenant) -> None:
    await seeded(acme)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a user token, even an admin's, is not enough
        await acme.admin.stub.ProbePolicies(probe_request(OWN_OBJECTS), metadata=acme.admin.md)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    cases = [
        (probe_request(OWN_OBJECTS, bucket="nope"), "bucket 'nope' does not exist in tenant 'acme'"),
        (probe_request(OWN_OBJECTS, tenant="globex"), "bucket 'photos' does not exist in tenant 'globex'"),
        (
            probe_request(OWN_OBJECTS, limit=MAX_PROBE_LIMIT + 1),
            "limit must be 1..1000 (0 means 100), not 1001",
        ),
        (probe_request({"name": "p", "rules": []}), "policy.rules must be a non-empty list"),
    ]
    for request, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await probe(acme, request)
        assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
