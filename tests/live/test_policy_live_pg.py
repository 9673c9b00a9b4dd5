"""The live dry run end to end on live PostgreSQL: auth asks the real data service (row-level security, in a
rolled-back transaction) and the answer is what each member is then served by its own SELECT.

The real auth (platform database on PostgreSQL), data, storage and realtime services (tests/services/
live_support.py with real_data). A private platform database per module, dropped afterwards with the
tenant's databases and roles. Skipped when POSTGRES_DSN is unset, unless LAUNCHPAD_REQUIRE_LIVE=1.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from launchpad.auth.v1 import auth_pb2
from launchpad.data.v1 import data_pb2
from services.core.structs import dict_to_struct, struct_to_dict
from tests.conftest import LIVE_ENV
from tests.services.live_support import Stack, live_stack
from tests.services.test_data import values
from tests.support import PrivateDatabase, metadata, need_env

pytestmark = pytest.mark.live

OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
READ_ALL = {"name": "own-rows", "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes"}]}
ROWS = [("dev1", "a"), ("dev2", "b"), ("dev1", "c"), ("dev2", "d")]


@pytest.fixture(scope="module")
def live_db() -> Iterator[PrivateDatabase]:
    db = PrivateDatabase(LIVE_ENV["POSTGRES_DSN"] or need_env("POSTGRES_DSN"), "lp_helper_g")
    try:
        yield db
    finally:
        db.drop()


class Acme:
    def __init__(self, stack: Stack, tokens: dict[str, str]) -> None:
        self.stack, self.tokens = stack, tokens

    async def select(self, who: str) -> list[int]:
        request = data_pb2.QueryRequest(sql="SELECT id FROM notes ORDER BY id")
        return [
            row[0] for row in values(await self.stack.sql.Query(request, metadata=metadata(self.tokens[who])))
        ]

    async def live(self, who: str, **fields: Any) -> auth_pb2.LiveResult:
        request = auth_pb2.DryRunPolicyRequest(live=auth_pb2.LiveTarget(table="notes"))
        if "policy" in fields:
            request.policy.CopyFrom(json_format.ParseDict(fields["policy"], auth_pb2.Policy()))
        if "subject" in fields:
            request.subject.CopyFrom(dict_to_struct(fields["subject"]))
        return (await self.stack.auth.DryRunPolicy(request, metadata=metadata(self.tokens[who]))).live


def ids(result: auth_pb2.LiveResult, flag: str = "read") -> list[int]:
    return [struct_to_dict(e.record)["id"] for e in result.entries if getattr(e, flag)]


@pytest.fixture
async def acme(
    live_db: PrivateDatabase, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Acme]:
    monkeypatch.setenv("POSTGRES_DSN", live_db.dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    async with live_stack(monkeypatch, real_data=True) as stack:
        tenant = f"g{uuid.uuid4().hex[:10]}"
        tokens = {"ada": await stack.user(f"ada{tenant}", "admin", tenant=tenant)}
        for name, role in (("dev1", "developer"), ("dev2", "developer"), ("vic", "viewer")):
            tokens[name] = await stack.user(f"{name}{tenant}", role, tenant=tenant)
        acme = Acme(stack, tokens)
        create = "CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL, body text)"
        await stack.sql.Query(data_pb2.QueryRequest(sql=create), metadata=metadata(tokens["dev1"]))
        for owner, body in ROWS:
            insert = data_pb2.QueryRequest(
                sql="INSERT INTO notes (owner, body) VALUES ($1, $2)",
                params=[data_pb2.Cell(text=f"{owner}{tenant}"), data_pb2.Cell(text=body)],
            )
            await stack.sql.Query(insert, metadata=metadata(tokens["dev1"]))
        policy = auth_pb2.CreatePolicyRequest(policy=json_format.ParseDict(OWN_ROWS, auth_pb2.Policy()))
        await stack.auth.CreatePolicy(
            policy, metadata=metadata(tokens["ada"])
        )  # applied by the real data service
        yield acme


async def test_the_table_dry_run_is_what_each_member_is_served(acme: Acme) -> None:
    for who in ("dev1", "dev2", "vic", "ada"):
        result = await acme.live(who)
        assert ids(result) == await acme.select(who), who
        assert result.governed == (who != "ada")
    assert await acme.select("dev1") == [1, 3]
    mine = await acme.live("dev1")
    assert ids(mine, "update") == ids(mine, "delete") == [1, 3]
    assert ids(await acme.live("vic"), "update") == []


async def test_a_candidate_is_probed_and_neither_stored_nor_applied(acme: Acme) -> None:
    dev1 = {
        "sub": struct_to_dict((await acme.live("dev1")).entries[0].record)["owner"],
        "roles": ["developer"],
    }
    before = await acme.stack.auth.ListPolicies(
        auth_pb2.ListPoliciesRequest(), metadata=metadata(acme.tokens["ada"])
    )
    result = await acme.live("ada", policy=READ_ALL, subject=dev1)
    assert (ids(result), ids(result, "update")) == ([1, 2, 3, 4], [])
    after = await acme.stack.auth.ListPolicies(
        auth_pb2.ListPoliciesRequest(), metadata=metadata(acme.tokens["ada"])
    )
    assert after == before
    assert await acme.select("dev1") == [1, 3]  # the stored own-rows still enforced
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.live("dev1", policy=READ_ALL)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
