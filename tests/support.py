"""Shared test helpers: a test signing key, tokens, and real grpc.aio servers on port 0."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import psycopg2
import psycopg2.extensions
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from services.core.config import load_settings
from services.core.server import Runtime, ServiceSpec, create_server, new_runtime
from services.core.tokens import StaticKeys
from services.data.pg_provision import tenant_database_prefix

ISSUER, AUDIENCE = "launchpad-auth", "launchpad"
TEST_KID = "test-key-1"
_PRIVATE = ec.generate_private_key(ec.SECP256R1())
TEST_PUBLIC_KEY = _PRIVATE.public_key()
TEST_KEYS = StaticKeys({TEST_KID: TEST_PUBLIC_KEY})
TEST_JWKS = {"keys": [{**ECAlgorithm.to_jwk(TEST_PUBLIC_KEY, as_dict=True), "kid": TEST_KID, "alg": "ES256"}]}


def make_token(
    sub: str = "alice",
    tenant: str = "acme",
    roles: tuple[str, ...] = ("developer",),
    *,
    ttl: int = 3600,  # modules make tokens at import: they must outlive the whole suite
    key: Any = None,
    kid: str = TEST_KID,
    **claims: Any,
) -> str:
    """An ES256 token signed by the test key (or `key`), with the claims the auth service issues."""
    now = int(time.time())
    payload = {
        "sub": sub,
        "tenant": tenant,
        "roles": list(roles),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode(payload, key or _PRIVATE, algorithm="ES256", headers={"kid": kid})


def metadata(
    token: str | None = None, request_id: str | None = "test-req", **extra: str
) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata as the edge sends it."""
    items = [] if request_id is None else [("x-request-id", request_id)]
    if token is not None:
        items.append(("authorization", f"Bearer {token}"))
    items.extend((k.replace("_", "-"), v) for k, v in extra.items())
    return tuple(items)


def live_required() -> bool:
    return os.environ.get("LAUNCHPAD_REQUIRE_LIVE") == "1"


# The stack fixtures run the same tests on both topologies: one process per service, and all in one.
TOPOLOGIES = ("split", "single")


def need_env(name: str) -> str:
    """The variable's value; skips the test when unset, fails instead under LAUNCHPAD_REQUIRE_LIVE=1."""
    value = os.environ.get(name, "")
    if not value:
        if live_required():
            pytest.fail(f"{name} is not set but LAUNCHPAD_REQUIRE_LIVE=1")
        pytest.skip(f"{name} not set")
    return value


@contextlib.asynccontextmanager
async def running_service(
    name: str, build: Callable[[Runtime], Awaitable[list[ServiceSpec]]], *, keys: Any = TEST_KEYS
) -> AsyncIterator[tuple[Runtime, grpc.aio.Channel]]:
    """Starts a real grpc.aio server of `name` on port 0 and yields (runtime, channel to it).

    The environment (see the settings_env fixture) decides the modes. Tokens from make_token() verify unless
    build() installs its own keys (the auth service does).
    """
    runtime = new_runtime(load_settings(name))
    runtime.keys = keys
    try:
        specs = await build(runtime)
        server, port = await create_server(runtime, specs, port=0)
    except BaseException:
        await runtime.close()
        raise
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield runtime, channel
    finally:
        await channel.close()
        await server.stop(None)
        await runtime.close()


def openssl_verifies(folder: Path, public_key_pem: str, signature_b64: str, blob: bytes) -> bool:
    """`openssl dgst -sha256 -verify` on a cosign-style signature, as a user would check one."""
    import base64
    import subprocess

    (folder / "key.pub").write_text(public_key_pem)
    (folder / "sig.der").write_bytes(base64.b64decode(signature_b64))
    (folder / "artifact.tar.gz").write_bytes(blob)
    verify = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "key.pub", "-signature", "sig.der", "artifact.tar.gz"],
        cwd=folder, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return verify.returncode == 0 and "Verified OK" in verify.stdout


def stored_object(storage_path: str, settings: Any) -> bytes:
    """The bytes at "bucket/key" in the object store these settings select (embedded folder or S3)."""
    import asyncio

    from services.core.deps import Registry
    from services.core.objectstore import open_object_store

    bucket, _, key = storage_path.partition("/")

    async def read() -> bytes:
        store = await open_object_store(settings, Registry())
        try:
            return await store.get(bucket, key)
        finally:
            await store.close()

    return asyncio.run(read())


def pg_admin(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement as the server's administrator, autocommitted (CREATE/DROP DATABASE need it); its rows."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


class PrivateDatabase:
    """A platform database of our own on the live PostgreSQL, dropped afterwards with every tenant database
    and role made from it (they are cluster-wide and share its name's prefix)."""

    def __init__(self, server: str, prefix: str = "lp_it") -> None:
        self.server = server
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.dsn = psycopg2.extensions.make_dsn(server, dbname=self.name)
        pg_admin(server, f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        prefix = tenant_database_prefix(self.name)
        pg_admin(self.server, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        found = "SELECT datname FROM pg_database WHERE starts_with(datname, %s)"
        for (name,) in pg_admin(self.server, found, (prefix,)):
            pg_admin(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        found = "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)"
        for (name,) in pg_admin(self.server, found, (prefix,)):
            pg_admin(self.server, f'DROP ROLE IF EXISTS "{name}"')


_HELD: list[socket.socket] = []


def free_address() -> str:
    """An address where nothing listens (a backend that is down). The port stays bound (not listening) for the
    rest of the run: connecting is refused, and no server started later with port 0 can be handed it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return f"127.0.0.1:{sock.getsockname()[1]}"
