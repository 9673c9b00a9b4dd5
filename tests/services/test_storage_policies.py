"""Storage objects obey the tenant's policies: the storage service on a real grpc.aio server (port 0), on the
embedded folder of buckets, with the real compiled PolicySet read from a stand-in policy book (a dict of
documents per tenant, re-read on every call like the real book's revision check).

Two developers (dev1, dev2), a viewer and a tenant admin of tenant acme. tests/live/test_storage_s3.py runs
the own-objects cases against a real S3 server (SeaweedFS).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from launchpad.storage.v1 import storage_pb2, storage_pb2_grpc
from services.auth.app import MIGRATIONS as AUTH_MIGRATIONS
from services.auth.store import AuthStore, PolicyRecord
from services.core.config import load_settings
from services.core.db import open_platform_db
from services.core.deps import Registry
from services.core.folderstore import FolderStore
from services.core.policy import PolicySet, compile_set
from services.storage.names import physical_bucket
from services.storage.servicer import MAX_SCAN_PAGES, build
from tests.services.test_storage import fails, signature_of
from tests.support import make_token, metadata, running_service

TENANT = "acme"
OWN_OBJECTS = {
    "name": "own-objects",
    "rules": [
        {
            "effect": "allow",
            "actions": ["read", "write"],
            "resource": "storage:*",
            "condition": {"record.owner": "$subject.sub"},
        }
    ],
}
ALLOW_ALL = {"name": "allow-all", "rules": [{"effect": "allow", "actions": ["*"], "resource": "storage:*"}]}
READ_ALL = {"name": "read-all", "rules": [{"effect": "allow", "actions": ["read"], "resource": "storage:*"}]}
NO_SECRETS = {
    "name": "no-secrets",
    "rules": [{"effect": "deny", "actions": ["read", "write"], "resource": "storage:secret/*"}],
}


class Book:
    """A stand-in for services.core.policy.book.PolicyBook: the tenant's documents, compiled on every read."""

    def __init__(self) -> None:
        self.documents: dict[str, list[Mapping[str, Any]]] = {}
        self.revision = 0
        self.reads = 0

    def store(self, tenant: str, *documents: Mapping[str, Any]) -> None:
        self.documents[tenant] = list(documents)
        self.revision += 1

    async def current(self, tenant: str) -> PolicySet:
        self.reads += 1
        return compile_set(self.documents.get(tenant, []), self.revision)


class User:
    def __init__(self, stub: storage_pb2_grpc.StorageServiceStub, sub: str, role: str) -> None:
        self.stub, self.sub = stub, sub
        self.md = metadata(make_token(sub=sub, tenant=TENANT, roles=(role,)))

    async def put_url(self, path: str, content_type: str = "") -> storage_pb2.UrlSignature:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method="PUT", content_type=content_type)
        return signature_of((await self.stub.CreateSignedUrl(request, metadata=self.md)).url)

    async def get_url(self, path: str) -> storage_pb2.UrlSignature:
        request = storage_pb2.CreateSignedUrlRequest(path=path, method="GET")
        return signature_of((await self.stub.CreateSignedUrl(request, metadata=self.md)).url)

    async def write(self, sig: storage_pb2.UrlSignature, data: bytes) -> storage_pb2.ObjectInfo:
        async def requests() -> AsyncIterator[storage_pb2.WriteObjectRequest]:
            yield storage_pb2.WriteObjectRequest(signature=sig, data=data)

        return (await self.stub.WriteObject(requests(), metadata=metadata())).object

    async def read(self, sig: storage_pb2.UrlSignature) -> bytes:
        request = storage_pb2.ReadObjectRequest(signature=sig)
        return b"".join([m.data async for m in self.stub.ReadObject(request, metadata=metadata())])

    async def upload(self, path: str, data: bytes = b"", content_type: str = "") -> storage_pb2.ObjectInfo:
        return await self.write(await self.put_url(path, content_type), data or path.encode())

    async def download(self, path: str) -> bytes:
        return await self.read(await self.get_url(path))

    async def page(self, bucket: str, prefix: str = "", size: int = 0, token: str = "") -> Any:
        request = storage_pb2.ListObjectsRequest(
            bucket=bucket, prefix=prefix, page_size=size, page_token=token
        )
        return await self.stub.ListObjects(request, metadata=self.md)

    async def keys(self, bucket: str, prefix: str = "", size: int = 0) -> list[str]:
        """Every key listed, following the pages to the end."""
        keys, token = [], ""
        while True:
            page = await self.page(bucket, prefix, size, token)
            keys += [o.key for o in page.objects]
            if not (token := page.next_page_token):
                return keys

    async def delete(self, path: str) -> bool:
        request = storage_pb2.DeleteObjectRequest(path=path)
        return (await self.stub.DeleteObject(request, metadata=self.md)).deleted

    async def delete_prefix(self, prefix: str) -> int:
        request = storage_pb2.DeleteObjectsRequest(prefix=prefix)
        return (await self.stub.DeleteObjects(request, metadata=self.md)).deleted


class Tenant:
    def __init__(self, stub: storage_pb2_grpc.StorageServiceStub, runtime: Any, book: Book) -> None:
        self.runtime, self.book = runtime, book
        self.dev1 = User(stub, "dev1", "developer")
        self.dev2 = User(stub, "dev2", "developer")
        self.viewer = User(stub, "viewer", "viewer")
        self.admin = User(stub, "boss", "admin")

    def policies(self, *documents: Mapping[str, Any]) -> None:
        self.book.store(TENANT, *documents)


@pytest.fixture
async def acme(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tenant]:
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)  # embedded, even where CI configured S3
    book = Book()

    async def build_with_book(runtime: Any) -> Any:
        return await build(runtime, book)

    async with running_service("storage", build_with_book) as (runtime, channel):
        tenant = Tenant(storage_pb2_grpc.StorageServiceStub(channel), runtime, book)
        for bucket in ("photos", "secret"):
            await tenant.admin.stub.CreateBucket(
                storage_pb2.CreateBucketRequest(name=bucket), metadata=tenant.admin.md
            )
        yield tenant


async def seeded(acme: Tenant) -> None:
    """dev1 and dev2 each upload objects (interleaved keys) under the own-objects policy."""
    acme.policies(OWN_OBJECTS)
    for user, names in ((acme.dev1, ("a", "c", "e")), (acme.dev2, ("b", "d"))):
        for name in names:
            await user.upload(f"photos/{name}")


def denied(code_message: tuple[grpc.StatusCode, str], *words: str) -> str:
    code, message = code_message
    assert code == grpc.StatusCode.PERMISSION_DENIED, message
    assert all(word in message for word in words), message
    return message


async def test_each_user_lists_downloads_and_deletes_only_its_own(acme: Tenant) -> None:
    await seeded(acme)
    assert await acme.dev1.keys("photos") == ["a", "c", "e"]
    assert await acme.dev2.keys("photos") == ["b", "d"]
    assert await acme.viewer.keys("photos") == []  # a viewer owns nothing
    assert await acme.dev1.download("photos/a") == b"photos/a"
    denied(await fails(acme.dev1.get_url("photos/b")), "storage:photos/b", "default deny")
    denied(await fails(acme.viewer.get_url("photos/a")))
    denied(await fails(acme.dev1.delete("photos/b")))
    denied(await fails(acme.dev1.put_url("photos/b")), "uploading over the object")  # USING on the existing
    assert await acme.dev2.download("photos/b") == b"photos/b"  # refused calls changed nothing
    assert await acme.dev1.delete("photos/a") is True
    assert await acme.dev1.keys("photos") == ["c", "e"]
    assert await acme.admin.keys("photos") == ["b", "c", "d", "e"]


async def test_a_refusal_does_not_tell_whether_the_object_exists(acme: Tenant) -> None:
    await seeded(acme)
    hidden = denied(await fails(acme.dev1.get_url("photos/b")))
    missing = denied(await fails(acme.dev1.get_url("photos/zz")))
    assert hidden.replace("photos/b", "photos/zz") == missing
    assert "dev2" not in hidden  # the reason names the outcome, not the object's owner
    hidden = denied(await fails(acme.dev1.delete("photos/b")))
    assert hidden.replace("photos/b", "photos/zz") == denied(await fails(acme.dev1.delete("photos/zz")))
    # A deny rule that reads the object matches dev2's object only: naming it would tell the object is there
    # and whose it is, so the outcome reported is the one a missing object gets.
    not_dev2 = {"effect": "deny", "actions": ["read"], "resource": "storage:*"}
    acme.policies(
        OWN_OBJECTS, {"name": "not-dev2", "rules": [{**not_dev2, "condition": {"record.owner": "dev2"}}]}
    )
    hidden = denied(await fails(acme.dev1.get_url("photos/b")))
    assert hidden.replace("photos/b", "photos/zz") == denied(await fails(acme.dev1.get_url("photos/zz")))
    assert "not-dev2" not in hidden
    denied(await fails(acme.dev2.get_url("photos/b")), "deny rule 0 of policy 'not-dev2' matched")


async def test_pages_may_be_short_but_never_skip_an_object(acme: Tenant) -> None:
    acme.policies(OWN_OBJECTS)
    mine = [f"k{i:03d}" for i in range(0, 60, 3)]  # dev1 owns every third key
    for i in range(60):
        user = acme.dev1 if f"k{i:03d}" in mine else acme.dev2
        await user.upload(f"photos/k{i:03d}")
    for i in range(30):  # then a stretch longer than one call scans, owned by dev2 only
        await acme.dev2.upload(f"photos/z{i:03d}")
    await acme.dev1.upload("photos/zzz")
    pages, token = [], ""
    while True:
        page = await acme.dev1.page("photos", size=2, token=token)
        pages.append([o.key for o in page.objects])
        if not (token := page.next_page_token):
            break
    assert all(len(p) <= 2 for p in pages)
    assert [key for p in pages for key in p] == [*mine, "zzz"]  # all of them, in order, once
    assert [] in pages  # the dev2-only stretch (30 > MAX_SCAN_PAGES x 2) answered an empty page
    assert MAX_SCAN_PAGES * 2 < 30
    assert await acme.dev1.keys("photos", prefix="k00") == ["k000", "k003", "k006", "k009"]


async def test_a_governed_page_token_names_no_hidden_key(acme: Tenant) -> None:
    """The token after a page names the last key looked at: sealed, it cannot show a key the caller may not
    read, and a token not given out by a governed listing (a forged plain one) is refused."""
    acme.policies(OWN_OBJECTS)
    await acme.dev1.upload("photos/a-mine")
    await acme.dev2.upload("photos/b-secret-of-dev2")
    await acme.dev1.upload("photos/c-mine")
    await acme.dev2.upload("photos/d-secret-of-dev2")
    first = await acme.dev1.page("photos", size=1)
    assert [o.key for o in first.objects] == ["a-mine"]
    rest = await acme.dev1.page("photos", size=2, token=first.next_page_token)
    assert [o.key for o in rest.objects] == ["c-mine"]
    for token in (first.next_page_token, rest.next_page_token):
        padded = token + "=" * (-len(token) % 4)
        assert not token or b"secret" not in base64.urlsafe_b64decode(padded)
    plain = base64.urlsafe_b64encode(b"b-secret-of-dev2").decode()
    code, message = await fails(acme.dev1.page("photos", size=2, token=plain))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "list again without it" in message


async def test_the_owner_is_the_signer_and_cannot_be_forged(acme: Tenant) -> None:
    await seeded(acme)
    sig = await acme.dev1.put_url("photos/mine")
    mac, packed = sig.signature.split(".")
    assert orjson.loads(base64.urlsafe_b64decode(packed + "==")) == ["dev1", "*"]
    forged_grant = base64.urlsafe_b64encode(orjson.dumps(["dev2", "*"])).decode().rstrip("=")
    for forged in (
        f"{mac}.{forged_grant}",  # claims dev2's ownership under dev1's HMAC
        f"{mac}.{base64.urlsafe_b64encode(orjson.dumps(['dev1', ''])).decode().rstrip('=')}",  # drops the check
        mac,  # no owner at all
        f"{mac}.not-base64!",
    ):
        code, _ = await fails(
            acme.dev1.write(storage_pb2.UrlSignature(**{**_fields(sig), "signature": forged}), b"x")
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, forged
    assert await acme.dev2.keys("photos") == ["b", "d"]  # no forged upload landed anywhere
    await acme.dev1.write(sig, b"honest")
    assert await acme.dev1.keys("photos") == ["a", "c", "e", "mine"]
    assert "mine" not in await acme.dev2.keys("photos")


def _fields(sig: storage_pb2.UrlSignature) -> dict[str, Any]:
    return {f.name: getattr(sig, f.name) for f in sig.DESCRIPTOR.fields}


async def test_an_upload_url_cannot_overwrite_what_appeared_after_it_was_signed(acme: Tenant) -> None:
    acme.policies(OWN_OBJECTS)
    early = await acme.dev1.put_url("photos/race")  # nothing there yet: allowed
    await acme.dev2.upload("photos/race", b"dev2's")
    code, message = await fails(acme.dev1.write(early, b"dev1 overwrites"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "new upload URL" in message
    assert await acme.dev2.download("photos/race") == b"dev2's"
    again = await acme.dev1.put_url("photos/own")
    await acme.dev1.write(again, b"1")
    code, _ = await fails(acme.dev1.write(again, b"2"))  # governed: one upload per URL
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    await acme.dev1.upload("photos/own", b"3")  # a new URL replaces the caller's own object
    assert await acme.dev1.download("photos/own") == b"3"


async def test_a_prefix_delete_removes_only_the_callers_objects(acme: Tenant) -> None:
    await seeded(acme)
    await acme.dev2.upload("photos/nested/x")
    assert await acme.dev1.delete_prefix("photos/") == 3
    assert await acme.admin.keys("photos") == ["b", "d", "nested/x"]
    assert await acme.dev1.delete_prefix("photos/") == 0
    assert await acme.viewer.keys("photos") == []
    events = [
        orjson.loads(line) for line in acme.runtime.settings.process.audit_path.read_bytes().splitlines()
    ]
    prefix_deletes = [e for e in events if e["action"].endswith("DeleteObjects")]
    assert [(e["deleted"], e["kept"]) for e in prefix_deletes] == [
        (3, 3),
        (0, 3),
    ]  # the count stays in the audit


async def test_tenant_admins_are_not_governed(acme: Tenant) -> None:
    await seeded(acme)
    acme.policies(OWN_OBJECTS, NO_SECRETS)
    assert await acme.admin.keys("photos") == ["a", "b", "c", "d", "e"]
    assert await acme.admin.download("photos/b") == b"photos/b"
    await acme.admin.upload("secret/plan")
    assert await acme.admin.download("secret/plan") == b"secret/plan"
    assert await acme.admin.delete("photos/b") is True


async def test_removing_the_policy_restores_todays_behaviour_on_the_next_call(acme: Tenant) -> None:
    await seeded(acme)
    assert await acme.dev1.keys("photos") == ["a", "c", "e"]
    reads = acme.book.reads
    acme.policies()  # every policy deleted
    assert await acme.dev1.keys("photos") == ["a", "b", "c", "d", "e"]
    assert acme.book.reads == reads + 1  # read on the call itself, no cache to expire
    assert await acme.viewer.download("photos/b") == b"photos/b"
    again = await acme.dev1.put_url("photos/b")  # ungoverned: any developer overwrites, as before
    await acme.dev1.write(again, b"1")
    await acme.dev1.write(again, b"2")  # and an upload URL is good until it expires
    assert await acme.dev2.download("photos/b") == b"2"
    assert await acme.dev1.delete_prefix("photos/") == 5
    acme.policies(OWN_OBJECTS)
    await acme.dev2.upload("photos/b")
    assert await acme.dev1.keys("photos") == []


async def test_a_deny_rule_on_a_bucket_wins_over_any_allow(acme: Tenant) -> None:
    acme.policies(ALLOW_ALL)
    await acme.dev1.upload("secret/plan")
    await acme.dev1.upload("photos/cat")
    acme.policies(ALLOW_ALL, NO_SECRETS)
    assert await acme.dev1.keys("secret") == []
    assert await acme.dev1.keys("photos") == ["cat"]
    denied(await fails(acme.dev1.get_url("secret/plan")), "deny rule 0 of policy 'no-secrets' matched")
    denied(await fails(acme.dev1.put_url("secret/new")), "no-secrets")
    denied(await fails(acme.dev1.delete("secret/plan")), "no-secrets")
    assert await acme.dev1.delete_prefix("secret/") == 0
    assert await acme.dev2.download("photos/cat") == b"photos/cat"  # allow-all: others' objects too
    assert await acme.admin.keys("secret") == ["plan"]


async def test_unknown_fields_in_conditions_deny(acme: Tenant) -> None:
    acme.policies(ALLOW_ALL)
    await acme.dev1.upload("photos/cat")
    colour = {"record.colour": "red"}
    acme.policies({"name": "red-only", "rules": [{**ALLOW_ALL["rules"][0], "condition": colour}]})
    assert await acme.dev1.keys("photos") == []
    denied(await fails(acme.dev1.get_url("photos/cat")))
    denied(await fails(acme.dev1.put_url("photos/dog")))
    # A deny whose condition cannot be evaluated does not deny: allow-all still lets everything through.
    acme.policies(
        ALLOW_ALL,
        {
            "name": "no-red",
            "rules": [{"effect": "deny", "actions": ["*"], "resource": "storage:*", "condition": colour}],
        },
    )
    assert await acme.dev1.keys("photos") == ["cat"]


async def test_objects_stored_before_owners_were_recorded_have_none(acme: Tenant) -> None:
    old = FolderStore(acme.runtime.settings.process.data_dir / "buckets")
    try:
        await old.put(physical_bucket(TENANT, "photos"), "legacy", b"old", "text/plain")
    finally:
        await old.close()
    acme.policies(OWN_OBJECTS)
    assert await acme.dev1.keys("photos") == []
    unowned = {"effect": "allow", "actions": ["read"], "resource": "storage:*"}
    acme.policies(
        OWN_OBJECTS,
        {"name": "unowned", "rules": [{**unowned, "condition": {"record.owner": {"exists": False}}}]},
    )
    assert await acme.dev1.keys("photos") == ["legacy"]
    assert await acme.viewer.download("photos/legacy") == b"old"
    denied(await fails(acme.dev1.put_url("photos/legacy")))  # reading is allowed, taking it over is not


async def test_uploads_are_decided_on_the_content_type_they_will_store(acme: Tenant) -> None:
    images = {"effect": "allow", "actions": ["write"], "resource": "storage:photos/*"}
    acme.policies(
        READ_ALL,
        {
            "name": "images",
            "rules": [{**images, "condition": {"record.content_type": {"in": ["image/png"]}}}],
        },
    )
    sig = await acme.dev1.put_url("photos/cat.png", "image/png")
    assert (await acme.dev1.write(sig, b"png")).content_type == "image/png"  # the signed type is stored
    denied(await fails(acme.dev1.put_url("photos/page.html", "text/html")), "uploading")
    denied(await fails(acme.dev1.put_url("photos/blob")))  # none asked: stored as application/octet-stream


async def test_roles_come_first_no_policy_lets_a_viewer_upload(acme: Tenant) -> None:
    acme.policies(ALLOW_ALL)
    await acme.dev1.upload("photos/cat")
    denied(await fails(acme.viewer.put_url("photos/v")), "viewers may not upload")
    for call in (acme.viewer.delete("photos/cat"), acme.viewer.delete_prefix("photos/")):
        assert (await fails(call))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert await acme.viewer.download("photos/cat") == b"photos/cat"  # reading is what the policy grants


async def test_the_real_policy_book_governs_storage_from_the_next_call(
    settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stand-in: auth's tables in the platform database, read by the book build() opens itself."""
    for name in ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings("auth")
    db = await open_platform_db(settings, Registry(), migrations=AUTH_MIGRATIONS)

    async def change(document: Mapping[str, Any] | None) -> None:
        async with AuthStore(db).policy_transaction() as policies:
            await policies.ensure_tenant(TENANT, "boss", 1)
            await policies.delete(TENANT, OWN_OBJECTS["name"])
            if document is not None:
                await policies.insert(PolicyRecord(TENANT, OWN_OBJECTS["name"], dict(document), 1, "boss"))
            await policies.bump_revision(TENANT)

    try:
        async with running_service("storage", build) as (runtime, channel):
            acme = Tenant(storage_pb2_grpc.StorageServiceStub(channel), runtime, Book())
            await acme.admin.stub.CreateBucket(
                storage_pb2.CreateBucketRequest(name="photos"), metadata=acme.admin.md
            )
            await acme.dev1.upload("photos/a")
            await acme.dev2.upload("photos/b")
            await change(OWN_OBJECTS)
            assert await acme.dev1.keys("photos") == ["a"]
            denied(await fails(acme.dev1.get_url("photos/b")), "default deny")
            await change(None)
            assert await acme.dev1.keys("photos") == ["a", "b"]
    finally:
        await db.close()
