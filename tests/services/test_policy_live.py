"""The live dry run (DryRunPolicy with `live`) through gRPC: the real auth, storage and realtime services, on
the embedded platform database and folder of buckets, with a stand-in data service for tables
(tests/services/live_support.py).

What it must hold: the dry run of a bucket or a topic agrees with what the same user is then served (list,
download, subscribe, publish); a candidate policy is evaluated and nothing is stored, applied or written;
developers and viewers run it only as themselves on the stored set and see only what they may read; bad
input is a 400 that says what to fix; every run is audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from google.protobuf import json_format

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from launchpad.data.v1 import data_pb2
from launchpad.realtime.v1 import realtime_pb2
from launchpad.storage.v1 import storage_pb2
from services.auth.app import build as build_auth
from services.auth.store import AuthStore
from services.core.config import load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.core.interceptors import DETAILS_KEY
from services.core.policy.book import NO_MIGRATIONS
from services.core.structs import dict_to_struct, struct_to_dict
from tests.services.live_support import TENANT, Stack, live_stack, serve
from tests.services.test_data import values
from tests.services.test_realtime import Client, value
from tests.support import free_address, metadata

OWN_OBJECTS = {
    "name": "own-objects",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "storage:*",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
READ_ALL = {
    "name": "own-objects",  # a candidate of the same name: replaces the stored own-objects when dry-run
    "rules": [{"effect": "allow", "actions": ["read"], "resource": "storage:*"}],
}
TEAM_A = {
    "name": "team-a",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "realtime:team-a*",
               "condition": {"subject.roles": {"contains": "developer"}}},
              {"effect": "allow", "actions": ["read"], "resource": "realtime:news"}],
}  # fmt: skip
OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
NOTES = [{"id": 1, "owner": "dev1", "body": "a"}, {"id": 2, "owner": "dev2", "body": "b"},
         {"id": 3, "owner": "dev1", "body": "c"}]  # fmt: skip


class Acme:
    """The stack with a tenant admin (ada), two developers (dev1, dev2) and a viewer (vic) of acme."""

    def __init__(self, stack: Stack, tokens: dict[str, str]) -> None:
        self.stack = stack
        self.tokens = tokens

    async def store(self, *documents: dict[str, Any]) -> None:
        for document in documents:
            request = auth_pb2.CreatePolicyRequest(policy=json_format.ParseDict(document, auth_pb2.Policy()))
            await self.stack.auth.CreatePolicy(request, metadata=metadata(self.tokens["ada"]))

    async def live(self, who: str, **fields: Any) -> auth_pb2.LiveResult:
        return (await self.stack.auth.DryRunPolicy(dry(**fields), metadata=metadata(self.tokens[who]))).live

    async def refused(self, who: str, code: grpc.StatusCode, **fields: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.stack.auth.DryRunPolicy(dry(**fields), metadata=metadata(self.tokens[who]))
        assert caught.value.code() == code, caught.value.details()
        return caught.value


def dry(
    policy: dict[str, Any] | None = None, subject: dict[str, Any] | None = None, **live: Any
) -> auth_pb2.DryRunPolicyRequest:
    request = auth_pb2.DryRunPolicyRequest(live=auth_pb2.LiveTarget(**live))
    if policy is not None:
        request.policy.CopyFrom(json_format.ParseDict(policy, auth_pb2.Policy()))
    if subject is not None:
        request.subject.CopyFrom(dict_to_struct(subject))
    return request


def keys(result: auth_pb2.LiveResult, flag: str = "read") -> list[str]:
    """The keys of the entries whose `flag` is set."""
    return [struct_to_dict(e.record)["key"] for e in result.entries if getattr(e, flag)]


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    for key, raw in error.trailing_metadata() or ():
        if key == DETAILS_KEY:
            return orjson.loads(raw)[0]
    return {}


@pytest.fixture
async def acme(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Acme]:
    async with live_stack(monkeypatch) as stack:
        tokens = {"ada": await stack.user("ada", "admin")}
        for name, role in (("dev1", "developer"), ("dev2", "developer"), ("vic", "viewer")):
            tokens[name] = await stack.user(name, role)
        request = storage_pb2.CreateBucketRequest(name="photos")
        await stack.storage.CreateBucket(request, metadata=metadata(tokens["ada"]))
        stack.data.tables[TENANT] = {"notes": [dict(row) for row in NOTES]}
        yield Acme(stack, tokens)


async def seeded(acme: Acme) -> None:
    """own-objects stored; dev1 uploads a and c, dev2 uploads b."""
    await acme.store(OWN_OBJECTS)
    for who, name in (("dev1", "a"), ("dev2", "b"), ("dev1", "c")):
        await acme.stack.upload(acme.tokens[who], f"photos/{name}")


async def downloadable(acme: Acme, who: str, key: str) -> bool:
    request = storage_pb2.CreateSignedUrlRequest(path=f"photos/{key}", method="GET")
    try:
        await acme.stack.storage.CreateSignedUrl(request, metadata=metadata(acme.tokens[who]))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
        return False
    return True


async def deletable_refused(acme: Acme, who: str, key: str) -> bool:
    """Whether a delete of `key` by `who` is refused (without deleting anything: only asked of refusals)."""
    request = storage_pb2.DeleteObjectRequest(path=f"photos/{key}")
    try:
        await acme.stack.storage.DeleteObject(request, metadata=metadata(acme.tokens[who]))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
        return True
    return False


# ----------------------------------------------------------------------------- agrees with what is served


async def test_a_bucket_dry_run_agrees_with_what_each_user_is_served(acme: Acme) -> None:
    await seeded(acme)
    for who in ("dev1", "dev2", "vic", "ada"):
        result = await acme.live(who, bucket="photos")
        served = await acme.stack.listed(acme.tokens[who], "photos")
        assert keys(result) == served, who
        for key in ("a", "b", "c"):  # a download URL is granted exactly where the dry run says read
            assert await downloadable(acme, who, key) == (key in served), (who, key)
    assert keys(await acme.live("dev1", bucket="photos")) == ["a", "c"]
    assert keys(await acme.live("dev1", bucket="photos"), "write") == ["a", "c"]
    assert keys(await acme.live("vic", bucket="photos")) == []  # a viewer owns nothing
    # The admin dry-runs as dev2: every object, and which of them dev2 may read and write.
    as_dev2 = await acme.live("ada", bucket="photos", subject={"sub": "dev2", "roles": ["developer"]})
    assert (as_dev2.resource, as_dev2.governed, as_dev2.truncated) == ("storage:photos", True, False)
    assert [struct_to_dict(e.record)["key"] for e in as_dev2.entries] == ["a", "b", "c"]
    assert (
        keys(as_dev2)
        == keys(as_dev2, "write")
        == ["b"]
        == await acme.stack.listed(acme.tokens["dev2"], "photos")
    )
    assert struct_to_dict(as_dev2.entries[1].record) == {
        "bucket": "photos", "key": "b", "size": 8, "content_type": "application/octet-stream", "owner": "dev2",
    }  # fmt: skip
    # What the dry run says dev2 may not write, storage refuses it.
    for key in ("a", "c"):
        assert await deletable_refused(acme, "dev2", key)
    # The admin itself is not governed: everything, every flag.
    own = await acme.live("ada", bucket="photos")
    assert (own.governed, keys(own), keys(own, "write")) == (False, ["a", "b", "c"], ["a", "b", "c"])


async def test_a_viewer_subject_never_writes_and_an_admin_subject_is_not_governed(acme: Acme) -> None:
    await seeded(acme)
    write_all = {
        "name": "own-objects",
        "rules": [{"effect": "allow", "actions": ["*"], "resource": "storage:*"}],
    }
    as_viewer = await acme.live(
        "ada", bucket="photos", policy=write_all, subject={"sub": "vic", "roles": ["viewer"]}
    )
    assert (keys(as_viewer), keys(as_viewer, "write")) == (["a", "b", "c"], [])  # roles first
    nobody = await acme.live("ada", bucket="photos", subject={"sub": "zed"})  # no roles: reads only
    assert (keys(nobody), keys(nobody, "write")) == ([], [])
    boss = await acme.live("ada", bucket="photos", subject={"sub": "boss", "roles": ["admin"]})
    assert (boss.governed, keys(boss, "write")) == (False, ["a", "b", "c"])


async def test_a_topic_dry_run_agrees_with_subscribe_and_publish(acme: Acme) -> None:
    await acme.store(TEAM_A)
    expected = {  # (who, topic) -> (read, write)
        ("dev1", "team-a1"): (True, True),
        ("dev1", "payroll"): (False, False),
        ("dev1", "news"): (True, False),
        ("vic", "team-a1"): (False, False),  # no developer role
        ("vic", "news"): (True, False),
        ("ada", "payroll"): (True, True),  # admins are not governed
    }
    for (who, topic), flags in expected.items():
        result = await acme.live(who, topic=topic)
        [entry] = result.entries
        assert (entry.read, entry.write) == flags, (who, topic)
        assert struct_to_dict(entry.record) == {"topic": topic}
        assert result.resource == f"realtime:{topic}"
        assert result.governed == (who != "ada")
        assert (await subscribes(acme, who, topic), await publishes(acme, who, topic)) == flags, (who, topic)


async def subscribes(acme: Acme, who: str, topic: str) -> bool:
    client = Client(acme.stack.realtime, acme.tokens[who])
    try:
        await client.send(subscribe=topic)
        while True:
            frame = await client.read()
            if frame.type in ("subscribed", "error"):
                return frame.type == "subscribed"
    finally:
        client.call.cancel()


async def publishes(acme: Acme, who: str, topic: str) -> bool:
    request = realtime_pb2.PublishRequest(topic=topic, msg=value(x=1))
    try:
        await acme.stack.realtime.Publish(request, metadata=metadata(acme.tokens[who]))
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.PERMISSION_DENIED, exc.details()
        return False
    return True


async def test_a_table_dry_run_asks_the_data_service_with_the_set_and_subject(acme: Acme) -> None:
    await acme.store(OWN_ROWS)
    result = await acme.live("dev1", table="notes")
    assert (result.resource, result.governed, result.truncated) == ("notes", True, False)
    assert [struct_to_dict(e.record)["id"] for e in result.entries] == [1, 3]
    assert all(e.read and e.update and e.delete and not e.write for e in result.entries)
    [probe] = acme.stack.data.probes
    assert (probe.tenant, probe.names, probe.table, probe.limit) == (
        "acme",
        ("own-rows",),
        "notes",
        1000,
    )  # a non-admin: always the whole look
    assert probe.subject == {"sub": "dev1", "tenant": "acme", "roles": ["developer"]}
    # The viewer reads its rows (none) and never writes, whatever the data service answers.
    assert list((await acme.live("vic", table="notes")).entries) == []
    readers = {**OWN_ROWS, "rules": [{"effect": "allow", "actions": ["*"], "resource": "notes"}]}
    as_viewer = await acme.live(
        "ada", table="notes", policy=readers, subject={"sub": "vic", "roles": ["viewer"]}
    )
    assert len(as_viewer.entries) == 3 and not any(e.update or e.delete for e in as_viewer.entries)
    assert acme.stack.data.probes[-1].documents == (readers,)  # the candidate replaced its namesake


# ------------------------------------------------------------------------------------------ candidates


async def test_a_candidate_policy_is_evaluated_and_nothing_is_stored_applied_or_written(acme: Acme) -> None:
    await seeded(acme)
    db = await open_platform_db(load_settings("auth"), Registry(), migrations=NO_MIGRATIONS)
    store = AuthStore(db)
    try:
        before = (await store.list_policies(TENANT), await store.policy_revision(TENANT))
        applied = list(acme.stack.data.applied)
        # Replacing the stored own-objects: dev1 would read everything (and write nothing).
        replaced = await acme.live(
            "ada", bucket="photos", policy=READ_ALL, subject={"sub": "dev1", "roles": ["developer"]}
        )
        assert (keys(replaced), keys(replaced, "write")) == (["a", "b", "c"], [])
        # Added next to it (another name): a deny wins over the stored allow.
        no_a = {
            "name": "no-a",
            "rules": [{"effect": "deny", "actions": ["read"], "resource": "storage:photos/a"}],
        }
        added = await acme.live(
            "ada", bucket="photos", policy=no_a, subject={"sub": "dev1", "roles": ["developer"]}
        )
        assert (keys(added), keys(added, "write")) == (["c"], ["a", "c"])
        topic = await acme.live(
            "ada", topic="team-a1", policy=TEAM_A, subject={"sub": "dev1", "roles": ["developer"]}
        )
        assert (topic.governed, topic.entries[0].read) == (True, True)
        # Nothing stored, no revision, nothing applied at the data service, no object touched.
        assert (await store.list_policies(TENANT), await store.policy_revision(TENANT)) == before
        assert acme.stack.data.applied == applied
        assert await acme.stack.listed(acme.tokens["ada"], "photos") == ["a", "b", "c"]
        assert await acme.stack.listed(acme.tokens["dev1"], "photos") == ["a", "c"]  # still the stored set
        assert await subscribes(acme, "dev1", "team-a1")  # TEAM_A was never stored: realtime ungoverned
    finally:
        await db.close()


# ------------------------------------------------------------------------------------------- security


async def test_developers_and_viewers_may_only_dry_run_themselves_on_the_stored_set(acme: Acme) -> None:
    await seeded(acme)
    for who, role in (("dev1", "developer"), ("vic", "viewer")):
        for target in ({"bucket": "photos"}, {"table": "notes"}, {"topic": "news"}):
            error = await acme.refused(who, grpc.StatusCode.PERMISSION_DENIED, policy=READ_ALL, **target)
            assert error.details().startswith(
                "only tenant admins may run a live dry run with a candidate policy: it shows real data"
            )
            other = {"sub": "dev2", "tenant": "acme", "roles": ["developer"]}
            error = await acme.refused(who, grpc.StatusCode.PERMISSION_DENIED, subject=other, **target)
            assert error.details().startswith("only tenant admins may run a live dry run as another subject")
            assert "dev2" not in error.details() and "photos/b" not in error.details()
        # Themselves, named explicitly, is themselves.
        self_subject = {"sub": who, "tenant": "acme", "roles": [role]}
        assert keys(await acme.live(who, bucket="photos", subject=self_subject)) == await acme.stack.listed(
            acme.tokens[who], "photos"
        )
        # Another tenant's data is not theirs to probe either.
        error = await acme.refused(who, grpc.StatusCode.PERMISSION_DENIED, bucket="photos", tenant="default")
        assert "your own tenant" in error.details()
    assert acme.stack.data.probes == []  # no refused table dry run reached the data service


async def test_non_admins_see_only_what_they_may_read_and_nothing_of_the_rest(acme: Acme) -> None:
    await seeded(acme)
    for name in ("d", "e", "f"):
        await acme.stack.upload(acme.tokens["dev2"], f"photos/{name}")  # hidden from dev1, after its keys
    full = await acme.live("dev1", bucket="photos")
    assert (keys(full), len(full.entries), full.truncated) == (["a", "c"], 2, False)
    one = await acme.live("dev1", bucket="photos", limit=1)
    assert (keys(one), one.truncated) == (["a"], True)
    # Exactly as many as it may read: not truncated, whatever number of hidden objects follows.
    two = await acme.live("dev1", bucket="photos", limit=2)
    assert (keys(two), two.truncated) == (["a", "c"], False)
    # The admin's look is its limit, and shows the hidden objects with their flags.
    admin = await acme.live("ada", bucket="photos", limit=2, subject={"sub": "dev1", "roles": ["developer"]})
    assert ([struct_to_dict(e.record)["key"] for e in admin.entries], keys(admin), admin.truncated) == (
        ["a", "b"], ["a"], True,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ bad input


async def test_bad_input_is_a_400_that_says_what_to_fix(acme: Acme) -> None:
    await acme.store(OWN_OBJECTS)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    error = await acme.refused("ada", bad, bucket="nope")
    assert error.details() == "bucket 'nope' does not exist in tenant 'acme'"
    assert details(error) == {"field": "live.bucket"}
    error = await acme.refused("ada", bad, bucket="No_Such")
    assert error.details().startswith("invalid bucket name 'No_Such'")
    for limit in (-1, 1001):
        error = await acme.refused("ada", bad, bucket="photos", limit=limit)
        assert error.details() == f"live.limit must be 1..1000 (leave it out for 100), not {limit}"
    error = await acme.refused("dev1", bad, bucket="photos", limit=5000)  # non-admins too
    assert details(error) == {"field": "live.limit"}
    invalid = {"name": "p", "rules": [{"effect": "permit", "actions": ["read"], "resource": "storage:*"}]}
    error = await acme.refused("ada", bad, bucket="photos", policy=invalid)
    assert error.details() == "rules[0].effect must be allow or deny"
    unknown_op = {"name": "p", "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes",
                                          "condition": {"record.x": {"between": [1, 2]}}}]}  # fmt: skip
    error = await acme.refused("ada", bad, table="notes", policy=unknown_op)
    assert "rules[0].condition['record.x'] has unknown operator 'between'" in error.details()
    error = await acme.refused("ada", bad, table="missing")
    assert (error.details(), details(error)) == ("table 'missing' does not exist", {"field": "live.table"})
    error = await acme.refused("ada", bad)  # live given, no target
    assert error.details() == "live needs a target: one of table, bucket or topic"
    error = await acme.refused("ada", bad, topic="no spaces")
    assert error.details().startswith("topic 'no spaces' is not valid")
    error = await acme.refused("ada", bad, table="")
    assert error.details() == "live.table must not be empty"
    for subject, message in [
        ({"sub": "dev1", "email": "x"}, "subject.email: a live dry run takes what a real call carries"),
        ({"roles": ["developer"]}, "subject.sub: name the user to dry-run as"),
        ({"sub": "dev1", "roles": "developer"}, "subject.roles: a list of role names"),
        ({"sub": "dev1", "tenant": "globex"}, "subject.tenant: the subject must be of tenant 'acme'"),
    ]:
        error = await acme.refused("ada", bad, bucket="photos", subject=subject)
        assert error.details().startswith(message), error.details()
    # Records, action and resource belong to the record mode.
    request = dry(bucket="photos")
    request.action, request.resource = "read", "storage:photos/a"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.stack.auth.DryRunPolicy(request, metadata=metadata(acme.tokens["ada"]))
    assert caught.value.details().startswith(
        "a live dry run decides every action of its target on real data: leave action, resource out"
    )


async def test_the_platform_admin_dry_runs_any_existing_tenant(acme: Acme) -> None:
    await seeded(acme)
    platform = await acme.stack.token("admin", "admin-Secret-1")
    acme.tokens["platform"] = platform
    as_dev1 = await acme.live(
        "platform", bucket="photos", tenant="acme", subject={"sub": "dev1", "roles": ["developer"]}
    )
    assert keys(as_dev1) == ["a", "c"]
    error = await acme.refused("platform", grpc.StatusCode.NOT_FOUND, bucket="photos", tenant="nowhere")
    assert error.details() == "tenant 'nowhere' not found"
    olga = await acme.stack.user("olga", "admin", tenant="globex")
    acme.tokens["olga"] = olga
    await acme.refused("olga", grpc.StatusCode.PERMISSION_DENIED, bucket="photos", tenant="acme")
    # globex has no bucket photos: its admin's own dry run cannot reach acme's.
    await acme.refused("olga", grpc.StatusCode.INVALID_ARGUMENT, bucket="photos")


# ------------------------------------------------------------------------------------------------ audit


async def test_every_live_dry_run_is_audited_with_target_subject_and_candidate(acme: Acme) -> None:
    await seeded(acme)
    await acme.live("ada", bucket="photos", policy=READ_ALL, subject={"sub": "dev2", "roles": ["developer"]})
    await acme.live("dev1", topic="news")
    await acme.refused("dev1", grpc.StatusCode.PERMISSION_DENIED, table="notes", subject={"sub": "dev2"})
    lines = acme.stack.auth_runtime.settings.process.audit_path.read_bytes().splitlines()
    events = [e for e in map(orjson.loads, lines) if e["action"].endswith("DryRunPolicy")]
    assert [(e["actor"], e["target"], e["code"]) for e in events] == [
        ("ada", "storage:photos", "OK"), ("dev1", "realtime:news", "OK"), ("dev1", "notes", "PERMISSION_DENIED"),
    ]  # fmt: skip
    first, second, refused = events
    assert (first["live"], first["subject"], first["subject_roles"], first["candidate"]) == (
        True, "dev2", "developer", "own-objects",
    )  # fmt: skip
    assert (first["policy_tenant"], first["governed"], first["entries"]) == ("acme", True, 3)
    assert (second["subject"], "candidate" in second) == ("dev1", False)
    assert refused["live"] is True


# ------------------------------------------------------------------------------------ services down


async def test_an_unreachable_storage_service_is_unavailable_not_an_empty_answer(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", "admin-Secret-1")
    monkeypatch.setenv("LAUNCHPAD_STORAGE_ADDR", free_address())
    async with serve("auth", build_auth, None) as (_, address), grpc.aio.insecure_channel(address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = auth_pb2.LoginRequest(username="admin", password="admin-Secret-1")
        token = (await stub.Login(login, metadata=metadata())).token
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(stub.DryRunPolicy(dry(bucket="photos"), metadata=metadata(token)), 15)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "the storage service is not reachable; try the live dry run again later"


# ------------------------------------------------------------------------ the real data service (SQLite)


async def test_a_table_dry_run_on_the_real_data_service_is_what_each_member_selects(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with live_stack(monkeypatch, real_data=True) as stack:
        tokens = {"ada": await stack.user("ada", "admin")}
        for name, role in (("dev1", "developer"), ("dev2", "developer"), ("vic", "viewer")):
            tokens[name] = await stack.user(name, role)

        async def sql(who: str, text: str) -> list[list[Any]]:
            response = await stack.sql.Query(data_pb2.QueryRequest(sql=text), metadata=metadata(tokens[who]))
            return values(response)

        await sql("ada", "CREATE TABLE notes (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, body TEXT)")
        for row in NOTES:
            await sql("ada", f"INSERT INTO notes VALUES ({row['id']}, '{row['owner']}', '{row['body']}')")
        acme = Acme(stack, tokens)
        await acme.store(OWN_ROWS)
        for who in ("dev1", "dev2", "vic", "ada"):
            result = await acme.live(who, table="notes")
            served = [row[0] for row in await sql(who, "SELECT id FROM notes ORDER BY id")]
            assert [struct_to_dict(e.record)["id"] for e in result.entries if e.read] == served, who
        mine = await acme.live("dev1", table="notes")
        assert [(e.update, e.delete) for e in mine.entries] == [(True, True), (True, True)]
        # A candidate: evaluated by the data service, never applied there.
        as_dev1 = await acme.live("ada", table="notes", policy={**OWN_ROWS, "rules": [
            {"effect": "allow", "actions": ["read"], "resource": "notes"}]}, subject={"sub": "dev1", "roles": ["developer"]})  # fmt: skip
        assert [struct_to_dict(e.record)["id"] for e in as_dev1.entries] == [1, 2, 3]
        assert [row[0] for row in await sql("dev1", "SELECT id FROM notes ORDER BY id")] == [1, 3]
