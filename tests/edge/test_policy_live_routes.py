"""`POST /api/policies/dryrun` in live mode through the real edge, in front of the real auth, storage and
realtime services and the stand-in data service (tests/services/live_support.py).

The route and the JSON come from the contract alone (auth.proto): the `live` object, its one target and the
`live` result with one entry per object, row or topic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.edge.test_edge_app import edge_app
from tests.services.live_support import PASSWORD, TENANT, Stack, live_stack

OWN_OBJECTS = {
    "name": "own-objects",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "storage:*",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
READ_ALL = {
    "name": "own-objects",
    "rules": [{"effect": "allow", "actions": ["read"], "resource": "storage:*"}],
}
OWN_ROWS = {
    "name": "own-rows",
    "rules": [{"effect": "allow", "actions": ["read", "write"], "resource": "notes",
               "condition": {"record.owner": "$subject.sub"}}],
}  # fmt: skip
DRYRUN = "/api/policies/dryrun"


@dataclass
class Edge:
    client: httpx.AsyncClient
    stack: Stack
    headers: dict[str, dict[str, str]]
    tokens: dict[str, str]

    async def dry(self, who: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(DRYRUN, json=body, headers=self.headers[who])

    async def live(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.dry(who, body)
        assert response.status_code == 200, response.text
        return response.json()["live"]


@pytest.fixture
async def edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    async with live_stack(monkeypatch) as stack:
        tokens = {"ada": await stack.user("ada", "admin")}
        for name, role in (("dev1", "developer"), ("dev2", "developer"), ("vic", "viewer")):
            tokens[name] = await stack.user(name, role)
        app = edge_app(stack.addresses)
        transport = httpx.ASGITransport(app=app)
        headers = {who: {"authorization": f"Bearer {token}"} for who, token in tokens.items()}
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            try:
                made = await client.post(
                    "/api/storage/buckets", json={"name": "photos"}, headers=headers["ada"]
                )
                assert made.status_code == 200, made.text
                stored = await client.post("/api/policies", json=OWN_OBJECTS, headers=headers["ada"])
                assert stored.status_code == 200, stored.text
                for who, key in (("dev1", "a"), ("dev2", "b"), ("dev1", "c")):
                    await stack.upload(tokens[who], f"photos/{key}")
                yield Edge(client, stack, headers, tokens)
            finally:
                await app.state.edge.backends.close()


def readable(live: dict[str, Any]) -> list[str]:
    return [entry["record"]["key"] for entry in live["entries"] if entry["read"]]


async def test_a_bucket_dry_run_through_the_edge_agrees_with_the_listing(edge: Edge) -> None:
    for who in ("dev1", "dev2", "vic"):
        live = await edge.live(who, {"live": {"bucket": "photos"}})
        listed = await edge.client.get("/api/storage/buckets/photos/objects", headers=edge.headers[who])
        assert readable(live) == [o["key"] for o in listed.json()["objects"]], who
    body = (await edge.dry("dev1", {"live": {"bucket": "photos"}})).json()
    assert body == {
        "decisions": [],
        "live": {
            "resource": "storage:photos",
            "governed": True,
            "entries": [
                {"record": {"bucket": "photos", "key": key, "size": 8, "content_type": "application/octet-stream",
                            "owner": "dev1"}, "read": True, "update": False, "delete": False, "write": True}
                for key in ("a", "c")
            ],
            "truncated": False,
        },
    }  # fmt: skip
    # The admin, as dev2, with a candidate (never stored): every object and dev2's flags on each.
    as_dev2 = await edge.live(
        "ada",
        {
            "live": {"bucket": "photos", "limit": 2},
            "policy": READ_ALL,
            "subject": {"sub": "dev2", "roles": ["developer"]},
        },
    )
    assert ([e["record"]["key"] for e in as_dev2["entries"]], readable(as_dev2), as_dev2["truncated"]) == (
        ["a", "b"], ["a", "b"], True,
    )  # fmt: skip
    policies = await edge.client.get("/api/policies/own-objects", headers=edge.headers["ada"])
    assert policies.json()["policy"]["rules"] == OWN_OBJECTS["rules"]  # the candidate was not stored
    assert len(edge.stack.data.applied) == 1  # the create only: nothing applied for the dry run


async def test_a_topic_and_a_table_through_the_edge(edge: Edge) -> None:
    edge.stack.data.tables[TENANT] = {"notes": [{"id": 1, "owner": "dev1"}, {"id": 2, "owner": "dev2"}]}
    assert (
        await edge.client.post("/api/policies", json=OWN_ROWS, headers=edge.headers["ada"])
    ).status_code == 200
    notes = await edge.live("dev2", {"live": {"table": "notes"}})
    assert notes == {
        "resource": "notes",
        "governed": True,
        "entries": [{"record": {"id": 2, "owner": "dev2"}, "read": True, "update": True, "delete": True,
                     "write": False}],
        "truncated": False,
    }  # fmt: skip
    topic = await edge.live("vic", {"live": {"topic": "chat"}})
    assert topic == {
        "resource": "realtime:chat",
        "governed": False,  # no realtime: rule: topics behave as without policies
        "entries": [{"record": {"topic": "chat"}, "read": True, "update": False, "delete": False, "write": False}],
        "truncated": False,
    }  # fmt: skip
    # The record mode is unchanged.
    records = {"policy": OWN_ROWS, "action": "read", "resource": "notes", "records": [{"owner": "dev1"}]}
    decided = (await edge.dry("dev1", records)).json()
    assert [d["decision"] for d in decided["decisions"]] == ["allow"] and decided["live"] is None


async def test_non_admins_get_403_for_a_candidate_or_another_subject(edge: Edge) -> None:
    for who in ("dev1", "vic"):
        candidate = await edge.dry(who, {"live": {"bucket": "photos"}, "policy": READ_ALL})
        assert candidate.status_code == 403
        assert candidate.json()["message"].startswith(
            "only tenant admins may run a live dry run with a candidate policy: it shows real data"
        )
        other = await edge.dry(
            who, {"live": {"bucket": "photos"}, "subject": {"sub": "dev2", "roles": ["developer"]}}
        )
        assert other.status_code == 403
        assert other.json()["message"].startswith(
            "only tenant admins may run a live dry run as another subject"
        )
    listed = await edge.client.get("/api/storage/buckets/photos/objects", headers=edge.headers["dev1"])
    assert [o["key"] for o in listed.json()["objects"]] == ["a", "c"]


async def test_bad_input_is_a_400_with_a_clear_message(edge: Edge) -> None:
    cases = [
        ({"live": {"bucket": "photos", "topic": "chat"}}, "'target' is given more than once"),
        ({"live": {"bucket": "nope"}}, "bucket 'nope' does not exist in tenant 'acme'"),
        ({"live": {"bucket": "photos", "limit": 2000}}, "live.limit must be 1..1000 (leave it out for 100), not 2000"),
        ({"live": {"bucket": "photos", "limit": -3}}, "live.limit must be 1..1000 (leave it out for 100), not -3"),
        ({"live": {}}, "live needs a target: one of table, bucket or topic"),
        ({"live": {"bucket": "photos"}, "records": [{"owner": "x"}]}, "leave records out"),
        (
            {"live": {"bucket": "photos"}, "policy": {"name": "p", "rules": [{"effect": "allow", "actions": ["read"],
             "resource": "storage:*", "condition": {"record.size": {"near": 3}}}]}},
            "rules[0].condition['record.size'] has unknown operator 'near'",
        ),
        ({"live": {"table": "missing"}}, "table 'missing' does not exist"),
    ]  # fmt: skip
    for body, message in cases:
        response = await edge.dry("ada", body)
        assert response.status_code == 400, (body, response.text)
        assert message in response.json()["message"], (body, response.json())
    unknown = await edge.dry(
        "ada", {"live": {"bucket": "photos"}, "policy": {"name": "p", "rules": [{"efect": "x"}]}}
    )
    assert unknown.status_code == 400 and 'unknown field "policy.rules[0].efect"' in unknown.json()["message"]


async def test_the_platform_admin_names_the_tenant(edge: Edge) -> None:
    login = await edge.client.post("/api/auth/login", json={"username": "admin", "password": PASSWORD})
    platform = {"authorization": f"Bearer {login.json()['token']}"}
    body = {
        "live": {"bucket": "photos", "tenant": "acme"},
        "subject": {"sub": "dev1", "roles": ["developer"]},
    }
    response = await edge.client.post(DRYRUN, json=body, headers=platform)
    assert response.status_code == 200, response.text
    assert readable(response.json()["live"]) == ["a", "c"]
    missing = await edge.client.post(
        DRYRUN, json={"live": {"bucket": "photos", "tenant": "nowhere"}}, headers=platform
    )
    assert missing.status_code == 404 and missing.json()["message"] == "tenant 'nowhere' not found"
