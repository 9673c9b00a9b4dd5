"""Policies enforced end to end, through the edge, on the whole stack as processes: embedded (SQLite, folder
store, in-process broker) and live (PostgreSQL row-level security, SeaweedFS, Redis).

One tenant, its admin, two developers (ann, bob) and a viewer (vic). The admin stores `own-rows`; each
developer then reads, counts, updates and deletes only its own rows, cannot forge an insert or give a row
away, and the known ways around the rule fail. The same for storage objects and realtime topics, and the live
dry run answers what the same user is then served.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from services.core.config import SERVICES
from services.launcher import Stack
from tests.conftest import LIVE_ENV
from tests.integration.test_endpoints import STRIPPED_PREFIXES
from tests.support import TOPOLOGIES, PrivateDatabase, need_env

PASSWORD = "policy-stack-pw-1"
BASE_PORT = 26000
OWN_ROWS = {
    "name": "own-rows",
    "rules": [
        {"effect": "allow", "actions": ["read", "write"], "resource": "notes",
         "condition": {"record.owner": "$subject.sub"}},
        {"effect": "allow", "actions": ["read"], "resource": "notes",
         "condition": {"record.public": True, "subject.roles": {"contains": "viewer"}}},
    ],
}  # fmt: skip
OWN_OBJECTS = {
    "name": "own-objects",
    "rules": [
        {"effect": "allow", "actions": ["read", "write"], "resource": "storage:*",
         "condition": {"record.owner": "$subject.sub"}},
    ],
}  # fmt: skip
TOPICS = {
    "name": "topics",
    "rules": [
        {"effect": "allow", "actions": ["read", "write"], "resource": "realtime:team-*",
         "condition": {"subject.roles": {"contains": "developer"}}},
        {"effect": "allow", "actions": ["read"], "resource": "realtime:news"},
    ],
}  # fmt: skip


@dataclass
class Tenant:
    client: httpx.Client
    name: str
    mode: str
    tokens: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def sql(self, user: str, statement: str, params: list[Any] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"sql": statement}
        if params is not None:
            body["params"] = params
        return self.client.post("/api/data/query", json=body, headers=self.headers(user))

    def rows(self, user: str, statement: str) -> list[list[Any]]:
        response = self.sql(user, statement)
        assert response.status_code == 200, (user, statement, response.text)
        return response.json()["rows"]

    def affected(self, user: str, statement: str) -> int:
        response = self.sql(user, statement)
        assert response.status_code == 200, (user, statement, response.text)
        return int(response.json().get("affected_rows", 0))

    def refused(self, user: str, statement: str) -> str:
        response = self.sql(user, statement)
        assert response.status_code == 403, (user, statement, response.status_code, response.text)
        return response.json()["message"]

    def put_policy(self, user: str, policy: dict[str, Any]) -> httpx.Response:
        return self.client.put(f"/api/policies/{policy['name']}", json=policy, headers=self.headers(user))


@pytest.fixture(
    scope="module", params=[(m, t) for t in TOPOLOGIES for m in ("embedded", "live")], ids="-".join
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Stack]]:
    mode, topology = request.param
    data_dir: Path = tmp_path_factory.mktemp(f"policies-{mode}-{topology}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update(
        LAUNCHPAD_DATA_DIR=str(data_dir),
        LAUNCHPAD_LOG_DIR=str(data_dir / "logs"),
        LAUNCHPAD_ADMIN_PASSWORD=PASSWORD,
        LAUNCHPAD_TOPOLOGY=topology,
        LAUNCHPAD_EDGE_PORT=str(BASE_PORT + 1),
        LAUNCHPAD_PUBLIC_URL=f"http://127.0.0.1:{BASE_PORT + 1}",
        **{f"LAUNCHPAD_{name.upper()}_PORT": str(BASE_PORT + port - 8000) for name, port in SERVICES.items()},
    )
    database = None
    if mode == "live":
        wanted = ("POSTGRES_DSN", "REDIS_URL", "MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
        live = {name: LIVE_ENV[name] or need_env(name) for name in wanted}
        database = PrivateDatabase(live["POSTGRES_DSN"], prefix="lp_pol")
        env.update(live, POSTGRES_DSN=database.dsn, SIMULATION_MODE="false")
    else:
        env["SIMULATION_MODE"] = "true"
    try:
        running = Stack(env, output=open(data_dir / "stack.out", "wb"))  # noqa: SIM115
        running.start()
        try:
            yield mode, running
        finally:
            running.stop()
    finally:
        if database is not None:
            database.drop()


@pytest.fixture(scope="module")
def tenant(stack: tuple[str, Stack]) -> Iterator[Tenant]:
    mode, running = stack
    with httpx.Client(base_url=running.edge_url, timeout=30) as client:
        root = client.post("/auth/login", json={"username": "admin", "password": PASSWORD}).json()["token"]
        name = f"pol_{uuid.uuid4().hex[:6]}"
        users = {"boss": "admin", "ann": "developer", "bob": "developer", "vic": "viewer"}
        found = Tenant(client, name, mode)
        for user, role in users.items():
            username = f"{user}_{name}"
            created = client.post(
                "/api/users",
                json={"username": username, "password": PASSWORD, "roles": [role], "tenant": name},
                headers={"Authorization": f"Bearer {root}"},
            )
            assert created.status_code == 200, created.text
            login = client.post("/auth/login", json={"username": username, "password": PASSWORD})
            found.tokens[user] = login.json()["token"]
        yield found


def names(tenant: Tenant, *users: str) -> list[str]:
    return [f"{user}_{tenant.name}" for user in users]


@pytest.fixture(scope="module")
def notes(tenant: Tenant) -> Tenant:
    ann, bob, boss = names(tenant, "ann", "bob", "boss")
    tenant.affected(
        "boss", "CREATE TABLE notes (id integer PRIMARY KEY, owner text, body text, public boolean)"
    )
    tenant.affected(
        "boss",
        "INSERT INTO notes VALUES "
        f"(1, '{ann}', 'a1', false), (2, '{ann}', 'a2', true), (3, '{bob}', 'b1', false), (4, '{boss}', 'x', true)",
    )
    tenant.affected("boss", "CREATE TABLE memo (id integer PRIMARY KEY, body text)")  # stays ungoverned
    tenant.affected("boss", "INSERT INTO memo VALUES (1, 'everyone')")
    stored = tenant.put_policy("boss", OWN_ROWS)
    assert stored.status_code == 200, stored.text
    return tenant


def test_only_admins_write_policies(notes: Tenant) -> None:
    for user in ("ann", "vic"):
        response = notes.put_policy(user, {**OWN_ROWS, "name": "mine"})
        assert response.status_code == 403, response.text
    assert notes.client.delete("/api/policies/own-rows", headers=notes.headers("ann")).status_code == 403
    listed = notes.client.get("/api/policies", headers=notes.headers("vic"))
    assert listed.status_code == 200 and [p["name"] for p in listed.json()["policies"]] == ["own-rows"]


def test_each_developer_reads_and_counts_only_its_own_rows(notes: Tenant) -> None:
    assert notes.rows("ann", "SELECT id FROM notes ORDER BY id") == [[1], [2]]
    assert notes.rows("bob", "SELECT id FROM notes ORDER BY id") == [[3]]
    assert notes.rows("ann", "SELECT count(*) FROM notes") == [[2]]
    assert notes.rows("vic", "SELECT id FROM notes ORDER BY id") == [[2], [4]]  # public rows, for viewers
    assert notes.rows("boss", "SELECT count(*) FROM notes") == [[4]]  # admins are not governed
    assert notes.rows("ann", "SELECT body FROM memo") == [["everyone"]]  # ungoverned: as before


def test_updates_and_deletes_touch_only_own_rows(notes: Tenant) -> None:
    assert notes.affected("ann", "UPDATE notes SET body = body || '!'") == 2
    assert notes.affected("ann", "DELETE FROM notes WHERE id = 3") == 0  # bob's row: invisible, untouched
    assert notes.rows("boss", "SELECT id, body FROM notes ORDER BY id") == [
        [1, "a1!"],
        [2, "a2!"],
        [3, "b1"],
        [4, "x"],
    ]


def test_forged_inserts_and_giving_rows_away_are_refused(notes: Tenant) -> None:
    bob = names(notes, "bob")[0]
    message = notes.refused("ann", f"INSERT INTO notes VALUES (10, '{bob}', 'forged', false)")
    assert "policy" in message.lower()
    notes.refused("ann", f"UPDATE notes SET owner = '{bob}' WHERE id = 1")
    notes.refused("vic", "INSERT INTO notes VALUES (11, 'x', 'y', false)")  # roles first: viewers never write
    assert notes.rows("boss", "SELECT count(*) FROM notes WHERE id >= 10") == [[0]]
    ann = names(notes, "ann")[0]
    assert notes.affected("ann", f"INSERT INTO notes VALUES (12, '{ann}', 'mine', false)") == 1
    assert notes.affected("ann", "DELETE FROM notes WHERE id = 12") == 1


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT id FROM notes WHERE owner <> 'nobody'",  # rows stay filtered whatever the WHERE
        "WITH x AS (SELECT * FROM notes) SELECT id FROM x",
        "SELECT id FROM (SELECT * FROM notes) AS s",
        "SELECT n.id FROM notes n JOIN memo m ON true",
    ],
)
def test_reading_around_the_rule_still_sees_only_own_rows(notes: Tenant, statement: str) -> None:
    response = notes.sql("ann", statement)
    if response.status_code == 200:
        assert {row[0] for row in response.json()["rows"]} <= {1, 2, 12}, statement
    else:
        assert response.status_code == 403, response.text


def test_bypasses_of_the_backend_fail(notes: Tenant) -> None:
    if notes.mode == "live":
        for statement in (
            "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
            "DROP POLICY lp_read ON notes",  # the permissive policy of the read rules
            "ALTER TABLE notes OWNER TO CURRENT_USER",
        ):
            assert notes.sql("ann", statement).status_code in (400, 403), statement
        off = notes.sql("ann", "SET row_security = off")
        assert off.status_code in (200, 400, 403)
        assert notes.rows("ann", "SELECT count(*) FROM notes")[0][0] <= 2
    else:
        for statement in ("SELECT id FROM main.notes", "DROP VIEW IF EXISTS temp.notes", "DROP TABLE notes"):
            response = notes.sql("ann", statement)
            assert response.status_code == 403, (statement, response.text)
    created = notes.sql("ann", "CREATE VIEW leak AS SELECT * FROM notes")
    if created.status_code == 200:
        response = notes.sql("bob", "SELECT id FROM leak")
        assert response.status_code == 403 or {r[0] for r in response.json()["rows"]} <= {3}, response.text
    assert notes.rows("boss", "SELECT count(*) FROM notes") == [[4]]


def test_storage_objects_obey_own_objects(notes: Tenant) -> None:
    client = notes.client
    bucket = f"pol-{uuid.uuid4().hex[:6]}"
    assert (
        client.post("/api/storage/buckets", json={"name": bucket}, headers=notes.headers("boss")).status_code
        == 200
    )
    assert notes.put_policy("boss", OWN_OBJECTS).status_code == 200
    for user in ("ann", "bob"):
        signed = client.post(
            "/api/storage/signed-url",
            json={"path": f"{bucket}/{user}.txt", "method": "PUT"},
            headers=notes.headers(user),
        )
        assert signed.status_code == 200, signed.text
        # S3 pins the owner and content type as signed headers: the client sends back what it was given
        upload = client.put(
            signed.json()["url"], content=f"{user}'s".encode(), headers=signed.json().get("headers", {})
        )
        assert upload.status_code == 200, upload.text
    listed = client.get(f"/api/storage/buckets/{bucket}/objects", headers=notes.headers("ann"))
    assert listed.status_code == 200, listed.text
    assert [o["key"] for o in listed.json()["objects"]] == ["ann.txt"]
    denied = client.post(
        "/api/storage/signed-url",
        json={"path": f"{bucket}/bob.txt", "method": "GET"},
        headers=notes.headers("ann"),
    )
    assert denied.status_code == 403, denied.text
    overwrite = client.post(
        "/api/storage/signed-url",
        json={"path": f"{bucket}/bob.txt", "method": "PUT"},
        headers=notes.headers("ann"),
    )
    assert overwrite.status_code == 403, overwrite.text
    everything = client.get(f"/api/storage/buckets/{bucket}/objects", headers=notes.headers("boss"))
    assert sorted(o["key"] for o in everything.json()["objects"]) == ["ann.txt", "bob.txt"]


async def test_realtime_topics_obey_the_topic_rules(notes: Tenant, stack: tuple[str, Stack]) -> None:
    assert notes.put_policy("boss", TOPICS).status_code == 200
    edge = stack[1].edge_url.replace("http://", "ws://")

    async def first_answer(user: str, topic: str) -> dict[str, Any]:
        async with connect(f"{edge}/ws/realtime?token={notes.tokens[user]}") as ws:
            await ws.send(orjson.dumps({"subscribe": topic}).decode())
            while True:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame.get("type") in ("subscribed", "error"):
                    return frame

    assert (await first_answer("ann", "team-red"))["type"] == "subscribed"
    refused = await first_answer("vic", "team-red")
    assert refused["type"] == "error" and refused["error"]["code"] == "PERMISSION_DENIED", refused
    assert "policy" in refused["error"]["message"], refused
    assert (await first_answer("vic", "news"))["type"] == "subscribed"
    published = notes.client.post(
        "/api/realtime/publish", json={"topic": "news", "msg": {"n": 1}}, headers=notes.headers("ann")
    )
    assert published.status_code == 403, published.text


def test_the_live_dry_run_answers_what_each_user_is_served(notes: Tenant) -> None:
    """The live dry run runs the real enforcement: its rows are exactly the rows the same user's SELECT gets,
    for the admin asking about a member and for members asking about themselves."""
    for user, role in (("ann", "developer"), ("bob", "developer"), ("vic", "viewer")):
        served = {row[0] for row in notes.rows(user, "SELECT id FROM notes")}
        subject = {"sub": names(notes, user)[0], "tenant": notes.name, "roles": [role]}
        for asker in ("boss", user):
            response = notes.client.post(
                "/api/policies/dryrun",
                json={"live": {"table": "notes"}, "subject": subject},
                headers=notes.headers(asker),
            )
            assert response.status_code == 200, response.text
            live = response.json()["live"]
            assert live["governed"] is True and live["resource"] == "notes"
            assert {e["record"]["id"] for e in live["entries"]} == served, (user, asker)
            assert all(e["read"] for e in live["entries"])
            assert all(e.get("update", False) == (role == "developer") for e in live["entries"]), live
    # A developer may not look through someone else's eyes, nor try a more generous policy on real data.
    other = {"sub": names(notes, "bob")[0], "tenant": notes.name, "roles": ["developer"]}
    as_bob = notes.client.post(
        "/api/policies/dryrun",
        json={"live": {"table": "notes"}, "subject": other},
        headers=notes.headers("ann"),
    )
    assert as_bob.status_code == 403, as_bob.text
    everything = {"name": "all", "rules": [{"effect": "allow", "actions": ["read"], "resource": "notes"}]}
    generous = notes.client.post(
        "/api/policies/dryrun",
        json={"live": {"table": "notes"}, "policy": everything},
        headers=notes.headers("ann"),
    )
    assert generous.status_code == 403, generous.text
    # The admin may: the candidate is evaluated, not stored.
    tried = notes.client.post(
        "/api/policies/dryrun",
        json={"live": {"table": "notes"}, "policy": everything, "subject": other},
        headers=notes.headers("boss"),
    )
    assert tried.status_code == 200 and len(tried.json()["live"]["entries"]) == 4, tried.text
    assert {row[0] for row in notes.rows("bob", "SELECT id FROM notes")} == {3}
