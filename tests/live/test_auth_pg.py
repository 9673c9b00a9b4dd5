"""The auth service against real PostgreSQL (POSTGRES_DSN; skipped when unset unless LAUNCHPAD_REQUIRE_LIVE=1).

Every scenario of tests/services/test_auth.py runs again here: they depend on the `auth_env` fixture, which
this module overrides with a private PostgreSQL database (so the first admin and the usernames are ours) and
SIMULATION_MODE=false (so nothing can fall back to SQLite unnoticed). PostgreSQL-only checks follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg2
import psycopg2.extensions
import pytest

from launchpad.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth.app import build
from tests.services import test_auth as scenarios
from tests.services import test_auth_policies as policy_scenarios
from tests.services.test_auth import ADMIN_PASSWORD, Auth, fails
from tests.support import metadata, running_service

pytestmark = pytest.mark.live

globals()["auth"] = scenarios.auth  # the fixture; it asks for auth_env, which resolves to the one below
globals().update(ada=policy_scenarios.ada, book=policy_scenarios.book)  # the policy scenarios' fixtures
for _module in (scenarios, policy_scenarios):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and {"auth", "auth_env"} & set(inspect.signature(_test).parameters):
            globals()[_name] = _test


@pytest.fixture
def private_dsn(pg_dsn: str) -> Iterator[str]:
    """A fresh database on the configured server, dropped afterwards."""
    name = f"lp_auth_test_{uuid.uuid4().hex[:12]}"
    _admin(pg_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield psycopg2.extensions.make_dsn(pg_dsn, dbname=name)
    finally:
        _admin(pg_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def auth_env(private_dsn: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("POSTGRES_DSN", private_dsn)
    monkeypatch.setenv("SIMULATION_MODE", "false")
    return settings_env


def _rows(dsn: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


async def test_the_service_really_uses_postgresql(auth: Auth, private_dsn: str) -> None:
    [sql] = [dep for dep in auth.runtime.deps.all() if dep.name == "sql"]
    assert (str(sql.mode), sql.healthy) == ("live", True)
    assert not (auth.data_dir / "platform.sqlite").exists()
    tables = _rows(private_dsn, "SELECT table_schema, table_name FROM information_schema.tables "
                                "WHERE table_name LIKE 'auth%%' ORDER BY table_name")  # fmt: skip
    assert tables == [
        ("launchpad", "auth_policies"),
        ("launchpad", "auth_policy_revisions"),
        ("launchpad", "auth_tenants"),
        ("launchpad", "auth_users"),
    ]


async def test_passwords_are_stored_as_argon2id_hashes(auth: Auth, private_dsn: str) -> None:
    await auth.create(await auth.admin(), "hank", ("viewer",), tenant="acme", password="hank-Secret-pass")
    rows = dict(_rows(private_dsn, "SELECT username, password_hash FROM launchpad.auth_users"))
    assert set(rows) == {"admin", "hank"}
    for stored in rows.values():
        assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert "hank-Secret-pass" not in stored and ADMIN_PASSWORD not in stored
    tenants = _rows(private_dsn, "SELECT name, created_by FROM launchpad.auth_tenants ORDER BY name")
    assert tenants == [("acme", "admin"), ("default", "system")]


async def test_data_survives_a_restart(auth: Auth, private_dsn: str) -> None:
    await auth.create(await auth.admin(), "ivy", ("developer",), tenant="acme")
    async with running_service("auth", build) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = await stub.Login(
            auth_pb2.LoginRequest(username="ivy", password="pw-ivy-123"), metadata=metadata()
        )
    assert login.user.tenant == "acme"


async def test_first_admin_is_created_once_postgresql_comes_up(
    private_dsn: str, settings_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started while PostgreSQL is unreachable (SIMULATION_MODE=false), the service retries the first admin."""
    monkeypatch.setattr("services.auth.app.ADMIN_RETRY_S", 0.2)
    target = psycopg2.extensions.parse_dsn(private_dsn)
    gate = _Gate(target.get("host", "127.0.0.1"), int(target.get("port", 5432)))
    port = gate.reserve_port()
    monkeypatch.setenv("POSTGRES_DSN", psycopg2.extensions.make_dsn(private_dsn, host="127.0.0.1", port=port))
    monkeypatch.setenv("SIMULATION_MODE", "false")
    monkeypatch.setenv("LAUNCHPAD_ADMIN_PASSWORD", ADMIN_PASSWORD)
    login = auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD)
    async with running_service("auth", build) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await fails(stub.Login(login, metadata=metadata()), grpc.StatusCode.UNAVAILABLE)
        await gate.open(port)
        try:
            for _ in range(100):
                await asyncio.sleep(0.1)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    response = await stub.Login(login, metadata=metadata())
                    break
            else:
                pytest.fail("the first admin never appeared")
            assert response.user.username == "admin"
        finally:
            await gate.close()


class _Gate:
    """A TCP forwarder to PostgreSQL that starts closed: the database 'comes up' when it opens."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.AbstractServer | None = None
        self._socket: socket.socket | None = None

    def reserve_port(self) -> int:
        """A port bound now and listened on when the gate opens: connecting is refused until then, and no
        other socket can take the port meanwhile."""
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return self._socket.getsockname()[1]

    async def open(self, port: int) -> None:
        assert self._socket is not None and self._socket.getsockname()[1] == port
        self._server = await asyncio.start_server(self._forward, sock=self._socket)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        elif self._socket is not None:
            self._socket.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
