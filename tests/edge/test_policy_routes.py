"""The policy routes through the real edge, in front of the real auth service (embedded SQLite) and the
stand-in data service that applies policy sets (tests/services/policy_support.py).

The routes come from the contract alone (auth.proto's http options): no edge code was added for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.auth.app import build
from services.core.config import load_settings
from services.core.errors import InvalidArgument
from services.core.server import create_server, new_runtime
from tests.edge.test_edge_app import edge_app
from tests.services.policy_support import FakeData, fake_data

PASSWORD = "admin-Secret-1"
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


@dataclass
class Edge:
    client: httpx.AsyncClient
    data: FakeData

    async def token(self, username: str, password: str) -> dict[str, str]:
        response = await self.client.post(
            "/api/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return {"authorization": f"Bearer {response.json()['token']}"}

    async def user(self, admin: dict[str, str], username: str, role: str) -> dict[str, str]:
        body = {"username": username, "password": f"pw-{username}-123", "roles": [role], "tenant": "acme"}
        response = await self.client.post("/api/users", json=body, headers=admin)
        assert response.status_code == 200, response.text
        return await self.token(username, f"pw-{username}-123")


@contextlib.asynccontextmanager
async def real_auth() -> AsyncIterator[str]:
    runtime = new_runtime(load_settings("auth"))
    try:
        server, port = await create_server(runtime, await build(runtime), port=0)
    except BaseException:
        await runtime.close()
        raise
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await runtime.close()


@pytest.fixture
async def edge(settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Edge]:
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", PASSWORD)
    async with fake_data(monkeypatch) as data, real_auth() as auth_address:
        app = edge_app({"auth": auth_address})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            try:
                yield Edge(client, data)
            finally:
                await app.state.edge.backends.close()


@pytest.fixture
async def roles(edge: Edge) -> dict[str, dict[str, str]]:
    """Headers of a tenant admin, a developer and a viewer of tenant acme."""
    platform = await edge.token("admin", PASSWORD)
    return {
        role: await edge.user(platform, f"{role[:3]}-acme", role) for role in ("admin", "developer", "viewer")
    }


def _rules(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body["policy"]["rules"]


async def test_an_admin_creates_gets_replaces_and_deletes(
    edge: Edge, roles: dict[str, dict[str, str]]
) -> None:
    admin = roles["admin"]
    created = await edge.client.post("/api/policies", json=OWN_ROWS, headers=admin)
    assert created.status_code == 200, created.text
    assert (created.json()["policy"]["tenant"], created.json()["revision"]) == ("acme", 1)
    got = await edge.client.get("/api/policies/own-rows", headers=admin)
    assert got.status_code == 200 and got.json()["policy"] == created.json()["policy"]

    replaced = await edge.client.put("/api/policies/own-rows", json={"rules": NO_BIG["rules"]}, headers=admin)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert (body["created"], body["revision"], body["policy"]["name"]) == (False, 2, "own-rows")
    assert _rules(body) == NO_BIG["rules"]
    fresh = await edge.client.put("/api/policies/no-big", json=NO_BIG, headers=admin)  # a PUT creates too
    assert (fresh.json()["created"], fresh.json()["revision"]) == (True, 3)

    deleted = await edge.client.delete("/api/policies/own-rows", headers=admin)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "revision": 4}
    listed = await edge.client.get("/api/policies", headers=admin)
    assert [p["name"] for p in listed.json()["policies"]] == ["no-big"]
    assert [a.names for a in edge.data.applied] == [
        ("own-rows",), ("own-rows",), ("no-big", "own-rows"), ("no-big",),
    ]  # fmt: skip


async def test_the_auth_aliases_reach_the_same_rpcs(edge: Edge, roles: dict[str, dict[str, str]]) -> None:
    admin = roles["admin"]
    assert (await edge.client.post("/api/auth/policies", json=OWN_ROWS, headers=admin)).status_code == 200
    assert (await edge.client.get("/api/auth/policies/own-rows", headers=admin)).json()["policy"][
        "name"
    ] == "own-rows"
    put = await edge.client.put(
        "/api/auth/policies/own-rows", json=NO_BIG | {"name": "own-rows"}, headers=admin
    )
    assert put.json()["revision"] == 2
    dry = {"policy": OWN_ROWS, "action": "read", "resource": "notes", "records": [{"owner": "adm-acme"}]}
    decided = await edge.client.post("/api/auth/policies/dryrun", json=dry, headers=admin)
    assert decided.json()["decisions"][0]["decision"] == "allow"
    assert (await edge.client.delete("/api/auth/policies/own-rows", headers=admin)).json()["deleted"] is True


async def test_developers_and_viewers_get_403_on_writes_but_read_and_dry_run(
    edge: Edge, roles: dict[str, dict[str, str]]
) -> None:
    assert (await edge.client.post("/api/policies", json=OWN_ROWS, headers=roles["admin"])).status_code == 200
    for role in ("developer", "viewer"):
        headers = roles[role]
        writes = [
            ("CreatePolicy", edge.client.post("/api/policies", json=NO_BIG, headers=headers)),
            (
                "ReplacePolicy",
                edge.client.put("/api/policies/own-rows", json=NO_BIG | {"name": ""}, headers=headers),
            ),
            ("DeletePolicy", edge.client.delete("/api/policies/own-rows", headers=headers)),
        ]
        for method, pending in writes:
            response = await pending
            assert response.status_code == 403, response.text
            assert response.json()["message"] == (
                f"{method} needs role admin (your roles: {role}); ask a tenant admin"
            )
        listed = await edge.client.get("/api/policies", headers=headers)
        assert [p["name"] for p in listed.json()["policies"]] == ["own-rows"]
        got = await edge.client.get("/api/policies/own-rows", headers=headers)
        assert got.status_code == 200 and _rules(got.json()) == OWN_ROWS["rules"]
        records = [{"owner": f"{role[:3]}-acme"}, {"owner": "someone"}]
        dry = {"policy": OWN_ROWS, "action": "read", "resource": "notes", "records": records}
        decided = await edge.client.post("/api/policies/dryrun", json=dry, headers=headers)
        assert [d["decision"] for d in decided.json()["decisions"]] == ["allow", "deny"]
    assert len(edge.data.applied) == 1  # the admin's create only


async def test_404_409_and_400s(edge: Edge, roles: dict[str, dict[str, str]]) -> None:
    admin = roles["admin"]
    missing = await edge.client.get("/api/policies/nope", headers=admin)
    assert (
        missing.status_code == 404 and missing.json()["message"] == "policy 'nope' not found in tenant 'acme'"
    )
    assert (await edge.client.delete("/api/policies/nope", headers=admin)).status_code == 404
    await edge.client.post("/api/policies", json=OWN_ROWS, headers=admin)
    duplicate = await edge.client.post("/api/policies", json=OWN_ROWS, headers=admin)
    assert duplicate.status_code == 409
    mismatch = await edge.client.put("/api/policies/own-rows", json=NO_BIG, headers=admin)
    assert mismatch.status_code == 400
    assert mismatch.json()["message"].startswith(
        "the policy's name 'no-big' does not match 'own-rows' in the path"
    )
    invalid = {
        "rules": [
            {
                "effect": "allow",
                "actions": ["read"],
                "resource": "notes",
                "condition": {"record.x": {"between": 1}},
            }
        ]
    }
    refused = await edge.client.put("/api/policies/own-rows", json=invalid, headers=admin)
    assert refused.status_code == 400
    assert "rules[0].condition['record.x'] has unknown operator 'between'" in refused.json()["message"]
    typo = await edge.client.put(
        "/api/policies/own-rows", json={"rules": [{"efect": "allow"}]}, headers=admin
    )
    assert typo.status_code == 400 and 'unknown field "policy.rules[0].efect"' in typo.json()["message"]
    assert (
        _rules((await edge.client.get("/api/policies/own-rows", headers=admin)).json()) == OWN_ROWS["rules"]
    )


async def test_a_set_the_data_service_cannot_compile_is_a_400_naming_table_and_column(
    edge: Edge, roles: dict[str, dict[str, str]]
) -> None:
    admin = roles["admin"]
    edge.data.refusal = InvalidArgument(
        "policy 'no-big' rule 0: column amount of table orders is text; gt needs a number",
        table="orders",
        column="amount",
    )
    refused = await edge.client.post("/api/policies", json=NO_BIG, headers=admin)
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "policy 'no-big' rule 0: column amount of table orders is text; gt needs a number; nothing was changed"
    )
    assert (await edge.client.get("/api/policies/no-big", headers=admin)).status_code == 404
    assert (await edge.client.get("/api/policies", headers=admin)).json()["policies"] == []
